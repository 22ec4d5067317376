"""runner.run: exit status relayed shell style, destroy always runs, unshare isolates."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mountplan
from mountplan import runner
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

RUN_SCRIPT = """
import sys, mountplan
from mountplan import runner
plan, root, state, unshare = sys.argv[1:5]
sys.exit(runner.run(mountplan.load(plan), {"input": root}, sys.argv[5:], state_dir=state, unshare=unshare == "1"))
"""


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 to ``path`` (capsys cannot see into the sandbox child)."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def wait_for(path: Path, timeout: float = 20.0) -> str:
    """The content of ``path`` once a process has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.parametrize("status", [0, 3, 255], ids=["zero", "three", "255"])
def test_exit_status_is_relayed(small_plan: mountplan.Plan, root_dir: str, state_dir: str, status: int) -> None:
    """The command's exit code is run()'s return value."""
    code = runner.run(small_plan, {"input": root_dir}, ["/bin/sh", "-c", f"exit {status}"], state_dir=state_dir)
    assert code == status


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV], ids=lambda s: s.name)
def test_killed_command_gives_128_plus_signal(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, sig: signal.Signals
) -> None:
    """A command killed by signal N gives 128+N, the shell convention."""
    code = runner.run(small_plan, {"input": root_dir}, ["/bin/sh", "-c", f"kill -{int(sig)} $$"], state_dir=state_dir)
    assert code == 128 + sig


def test_failing_command_still_destroys(small_plan: mountplan.Plan, root_dir: str, state_dir: str) -> None:
    """The mount exists while the command runs; after it fails, table and root are as before."""
    before = mount_table_snapshot()
    check = f"grep -q ' {root_dir}/scratch ' /proc/self/mountinfo || exit 9; exit 1"
    code = runner.run(small_plan, {"input": root_dir}, ["/bin/sh", "-c", check], state_dir=state_dir)
    assert code == 1, "9 would mean the plan was not applied while the command ran"
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


@pytest.mark.parametrize("unshare", [False, True], ids=["here", "unshare"])
def test_sigterm_to_mountplan_is_forwarded_then_destroys(
    small_plan_path: str, root_dir: str, state_dir: str, tmp_path: Path, unshare: bool
) -> None:
    """SIGTERM to a running mountplan reaches the command (143) and destroy still runs."""
    before = mount_table_snapshot()
    started = tmp_path / "started"
    command = ["/bin/sh", "-c", f'echo "$$" > {started}; exec sleep 60']
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, small_plan_path, root_dir, state_dir, "1" if unshare else "0", *command]
    )
    try:
        wait_for(started)
        during = mount_table_snapshot()
        mounted_here = any(f" {root_dir}/scratch " in line for line in during)
        # Unshared, the mount lives in the helper's namespace only.
        assert mounted_here is not unshare
        if unshare:
            assert during == before
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert mount_table_snapshot() == before
    # The mountpoint directory apply made is gone: destroy ran, not just namespace death.
    assert os.listdir(root_dir) == []


def test_unshare_isolates_mounts_and_pids(
    build_action: mountplan.Plan, userland: str, state_dir: str
) -> None:
    """Unshared, the caller's table never changes and the chrooted command sees only its own pids."""
    before = mount_table_snapshot()
    script = "readlink /proc/self/ns/pid > /result; ls /proc > /pids"
    code = runner.run(
        build_action, {"input": userland}, ["/bin/sh", "-c", script], chroot="input", unshare=True, state_dir=state_dir
    )
    assert code == 0
    assert mount_table_snapshot() == before
    inner_ns = Path(userland, "result").read_text().strip()
    assert inner_ns.startswith("pid:[") and inner_ns != os.readlink("/proc/self/ns/pid")
    pids = sorted(int(name) for name in Path(userland, "pids").read_text().split() if name.isdigit())
    # pid 1 is mountplan itself, then the shell and its ls: nothing from outside.
    assert pids[0] == 1 and pids[-1] <= 4, pids
    assert sorted(os.listdir(userland)) == ["bin", "pids", "result", "toolchain"]


@pytest.mark.parametrize("unshare", [False, True], ids=["here", "unshare"])
def test_missing_command_gives_127_and_destroys(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path, unshare: bool
) -> None:
    """A command that does not exist gives 127, one stderr line, and nothing stays mounted."""
    before = mount_table_snapshot()
    err = tmp_path / "stderr"
    with stderr_to(err):
        code = runner.run(
            small_plan, {"input": root_dir}, ["no-such-command-xyz"], state_dir=state_dir, unshare=unshare
        )
    assert code == runner.EXIT_NOT_FOUND == 127
    assert "mountplan: no-such-command-xyz: command not found" in err.read_text()
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


def test_not_executable_gives_126(small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path) -> None:
    """A command that exists but cannot be executed gives 126 and says why."""
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    err = tmp_path / "stderr"
    with stderr_to(err):
        code = runner.run(small_plan, {"input": root_dir}, [str(script)], state_dir=state_dir)
    assert code == runner.EXIT_CANNOT_EXECUTE == 126
    assert "cannot execute: Permission denied" in err.read_text()
    assert os.listdir(root_dir) == []


def test_unknown_chroot_root_is_refused_before_mounting(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str
) -> None:
    """chroot naming no plan root raises RootError and mounts nothing."""
    before = mount_table_snapshot()
    with pytest.raises(mountplan.RootError, match="no root of that name"):
        runner.run(small_plan, {"input": root_dir}, ["/bin/true"], chroot="output", state_dir=state_dir)
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


def test_bad_working_directory_raises_and_destroys(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str
) -> None:
    """A cwd that does not exist raises ExecutionError naming it, after destroying."""
    before = mount_table_snapshot()
    with pytest.raises(mountplan.ExecutionError, match="cannot chdir to '/no/such/dir'"):
        runner.run(small_plan, {"input": root_dir}, ["/bin/true"], cwd="/no/such/dir", state_dir=state_dir)
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


def test_apply_error_comes_back_from_the_namespace(
    small_plan: mountplan.Plan, tmp_path: Path, state_dir: str
) -> None:
    """Unshared, a missing root raises RootError in the caller like a run in place does."""
    with pytest.raises(mountplan.RootError):
        runner.run(small_plan, {"input": str(tmp_path / "missing")}, ["/bin/true"], unshare=True, state_dir=state_dir)


def test_signal_before_command_starts_skips_it(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that arrives during apply means the command never starts: 143, destroyed."""
    before = mount_table_snapshot()
    from mountplan.engine import executor

    real_apply = executor.apply_locked  # what Engine.session (run's apply) calls under the lock

    def apply_then_signal(*args: Any, **kwargs: Any) -> object:
        result = real_apply(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(executor, "apply_locked", apply_then_signal)
    marker = tmp_path / "ran"
    code = runner.run(small_plan, {"input": root_dir}, ["/bin/touch", str(marker)], state_dir=state_dir)
    assert code == 128 + signal.SIGTERM
    assert not marker.exists()
    assert mount_table_snapshot() == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_missing_chroot_directory_is_refused_before_mounting(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """A chroot path that does not exist raises RootError and mounts nothing."""
    before = mount_table_snapshot()
    with pytest.raises(mountplan.RootError, match="cannot open"):
        runner.run(small_plan, {"input": root_dir}, ["/bin/true"], chroot=str(tmp_path / "gone"), state_dir=state_dir)
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []
