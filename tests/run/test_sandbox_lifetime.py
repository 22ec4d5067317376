"""`mountplan run --unshare` as a sandbox that cannot outlive its owner (issue 13, items 6, 7, 8, 10).

Each test drives the real CLI in a subprocess, inside the test sandbox; the
command carries a unique marker argument, so its processes (and mountplan's,
whose command line holds the command) are found by scanning /proc. On main
2ccdb1f: after SIGKILL of `run` the helper, pid 1 and the command kept running;
20 orphaned jobs stayed zombies under pid 1; ^C on a terminal reached the
command 2-4 times; an fd root with --unshare failed with EINVAL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mountplan
from mountplan import runner
from mountplan._kernel.emulation import PROFILES
from mountplan._kernel.features import REQUIRED, SINCE
from mountplan.errors import RootError
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

MOUNTPLAN = os.path.join(os.path.dirname(sys.executable), "mountplan")
#: Every wait in this file is bounded by this many seconds.
DEADLINE = 30.0


def marked_processes(marker: str) -> dict[int, dict[str, str]]:
    """pid → /proc status fields of every live (non-zombie) process whose argv holds ``marker``."""
    found: dict[int, dict[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue  # exited meanwhile
        if marker.encode() not in argv:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if not fields.get("State", "").startswith("Z"):
            found[int(entry)] = {k: v.strip() for k, v in fields.items()}
    return found


def wait_until(predicate: object, what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate()`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def reap_orphans() -> None:
    """Reap whatever got reparented to us (the test runs as pid 1 of its sandbox)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


@contextlib.contextmanager
def running(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Popen that is always killed and reaped, whatever the test body did."""
    proc = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)


def run_argv(plan: str, root: str, state_dir: str, *command: str) -> list[str]:
    """`mountplan run PLAN --root input=ROOT --unshare -- COMMAND...`."""
    return [
        MOUNTPLAN,
        "run",
        plan,
        "--root",
        f"input={root}",
        "--state-dir",
        state_dir,
        "--unshare",
        "--",
        *command,
    ]


# --------------------------------------------------------------------------- item 6


def test_sigkill_of_run_kills_helper_pid_one_and_command(
    small_plan_path: str, root_dir: str, state_dir: str
) -> None:
    """SIGKILL of `run --unshare` while the command runs: every process of the sandbox is gone within seconds."""
    marker = f"sandbox-{uuid.uuid4().hex}"
    command = [sys.executable, "-c", "import time; time.sleep(60)", marker]
    with running(run_argv(small_plan_path, root_dir, state_dir, *command)) as proc:
        # mountplan, its helper, pid 1 (forks of mountplan: same argv) and the command.
        wait_until(lambda: len(marked_processes(marker)) >= 4, "the sandbox's four processes")
        assert any(
            p["Name"].startswith("python") and p["Pid"] != str(proc.pid)
            for p in marked_processes(marker).values()
        )
        proc.kill()
        proc.wait(timeout=DEADLINE)
        try:
            wait_until(lambda: not marked_processes(marker), "the sandbox to die with mountplan", timeout=5.0)
        finally:
            survivors = marked_processes(marker)
            for pid in survivors:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            reap_orphans()
        assert not survivors


# --------------------------------------------------------------------------- item 7

ORPHANS = """
import os, sys, time
ready, marker = sys.argv[1:3]
for _ in range(20):
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            os._exit(0)  # the job: orphaned at once, reparented to pid 1, exits
        os._exit(0)
    os.waitpid(middle, 0)
with open(ready, "w") as f:
    f.write("ready\\n")
time.sleep(3)
"""


def test_pid_one_reaps_orphans_while_the_command_runs(
    small_plan_path: str, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """20 finished background jobs of the command leave no zombie under the namespace's pid 1."""
    marker = f"reap-{uuid.uuid4().hex}"
    ready = tmp_path / "ready"
    command = [sys.executable, "-c", ORPHANS, str(ready), marker]
    with running(run_argv(small_plan_path, root_dir, state_dir, *command)) as proc:
        wait_until(ready.exists, "the command to start its jobs")
        time.sleep(1.0)
        # pid 1 of the new namespace: a fork of mountplan whose innermost pid is 1.
        pid_one = [
            pid for pid, p in marked_processes(marker).items() if p.get("NSpid", "").split()[-1:] == ["1"]
        ]
        assert len(pid_one) == 1, marked_processes(marker)
        zombies = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":\t", 1)
                    for line in Path(f"/proc/{entry}/status").read_text().splitlines()
                    if ":\t" in line
                )
                if fields.get("PPid", "").strip() == str(pid_one[0]) and fields.get("State", "").startswith(
                    "Z"
                ):
                    zombies.append(int(entry))
        assert zombies == [], f"{len(zombies)} zombie(s) under pid 1 while the command runs"
        assert proc.wait(timeout=DEADLINE) == 0


# --------------------------------------------------------------------------- item 8

COUNT_SIGINT = """
import signal, sys, time
ready, out = sys.argv[1:3]
count = 0
def on_sigint(signum, frame):
    global count
    count += 1
signal.signal(signal.SIGINT, on_sigint)
with open(ready, "w") as f:
    f.write("ready\\n")
start = time.monotonic()
while not count and time.monotonic() - start < 30:
    time.sleep(0.01)
time.sleep(1.0)  # room for a duplicate to arrive
with open(out, "w") as f:
    f.write(f"{count}\\n")
"""


def _play_shell(argv: list[str]) -> None:  # pragma: no cover - runs in the pty child
    """As the terminal's session leader: run ``argv`` as a foreground job, the way a shell does."""
    try:
        job = os.fork()
        if job == 0:
            os.setpgid(0, 0)
            while os.tcgetpgrp(0) != os.getpgrp():
                time.sleep(0.005)
            os.execv(argv[0], argv)
        with contextlib.suppress(OSError):
            os.setpgid(job, job)
        os.tcsetpgrp(0, job)
        _, status = os.waitpid(job, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    except BaseException:  # noqa: BLE001 - the child must never return into pytest
        os._exit(99)


@pytest.mark.parametrize("unshare", [True, False], ids=["unshare", "here"])
def test_ctrl_c_on_a_terminal_reaches_the_command_once(
    small_plan_path: str, root_dir: str, state_dir: str, tmp_path: Path, unshare: bool
) -> None:
    """^C typed on the terminal: the command, in the foreground job with mountplan, gets exactly one SIGINT."""
    ready, out = tmp_path / "ready", tmp_path / "count"
    argv = run_argv(
        small_plan_path, root_dir, state_dir, sys.executable, "-c", COUNT_SIGINT, str(ready), str(out)
    )
    if not unshare:
        argv.remove("--unshare")
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the pty child
        _play_shell(argv)
    output = bytearray()
    try:
        deadline = time.monotonic() + DEADLINE
        sent = False
        while True:
            if not sent and ready.exists():
                os.write(master, b"\x03")
                sent = True
            readable, _, _ = select.select([master], [], [], 0.05)
            if readable:
                try:
                    chunk = os.read(master, 4096)
                except OSError as exc:  # EIO: every holder of the pty's slave side is gone
                    if exc.errno != errno.EIO:
                        raise
                    chunk = b""
                output += chunk
                if not chunk:
                    break
            assert time.monotonic() < deadline, (
                f"timed out; terminal output:\n{output.decode(errors='replace')}"
            )
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        os.close(master)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert out.exists(), output.decode(errors="replace")
    assert out.read_text() == "1\n", f"SIGINTs seen by the command: {out.read_text().strip()}"
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")


def test_sigint_sent_to_mountplan_is_forwarded_exactly_once(
    small_plan_path: str, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """kill -INT of `run --unshare` (no terminal involved) still reaches the command, once."""
    ready, out = tmp_path / "ready", tmp_path / "count"
    argv = run_argv(
        small_plan_path, root_dir, state_dir, sys.executable, "-c", COUNT_SIGINT, str(ready), str(out)
    )
    with running(argv, start_new_session=True) as proc:
        wait_until(ready.exists, "the command to start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE) == 0
    assert out.read_text() == "1\n"


# --------------------------------------------------------------------------- item 10


def test_fd_root_works_with_unshare(small_plan_path: str, root_dir: str, state_dir: str) -> None:
    """`--root input=fd:N --unshare`: exit 0, and the command saw the plan's mount in the directory the fd names."""
    before = mount_table_snapshot()
    fd = os.open(root_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        argv = [
            MOUNTPLAN,
            "run",
            small_plan_path,
            "--root",
            f"input=fd:{fd}",
            "--state-dir",
            state_dir,
            "--unshare",
        ]
        check = f"grep -q ' {root_dir}/scratch ' /proc/self/mountinfo && touch {root_dir}/scratch/seen"
        # The file lands on the tmpfs: gone with it, so the root is left empty.
        result = subprocess.run(
            [*argv, "--", "/bin/sh", "-c", f"{check} && test -e {root_dir}/scratch/seen"],
            pass_fds=[fd],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


def test_fd_root_is_carried_even_when_its_path_was_renamed(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """The fd, not its path, decides where the mounts go: rename the directory after opening it."""
    fd = os.open(root_dir, os.O_PATH | os.O_DIRECTORY)
    moved = tmp_path / "moved"
    os.rename(root_dir, moved)
    os.mkdir(root_dir)  # a decoy at the old path
    try:
        check = f"grep -q ' {moved}/scratch ' /proc/self/mountinfo && ! grep -q ' {root_dir}/scratch ' /proc/self/mountinfo"
        code = runner.run(
            small_plan, {"input": fd}, ["/bin/sh", "-c", check], unshare=True, state_dir=state_dir
        )
    finally:
        os.close(fd)
    assert code == 0


def test_two_fd_roots_with_unshare_are_refused_before_anything_runs(
    tmp_path: Path, root_dir: str, state_dir: str
) -> None:
    """Only one directory fd can be carried into the new namespace: a second one is a RootError naming both."""
    path = tmp_path / "two.yaml"
    path.write_text(
        "version: 1\nname: two\nroots:\n  a: {}\n  b: {}\nmounts:\n"
        "  - {name: t, root: a, target: t, type: tmpfs}\n  - {name: u, root: b, target: u, type: tmpfs}\n"
    )
    plan = mountplan.load(path)
    other = tmp_path / "other"
    other.mkdir()
    a, b = (os.open(p, os.O_PATH | os.O_DIRECTORY) for p in (root_dir, str(other)))
    try:
        with pytest.raises(RootError, match="one directory fd"):
            runner.run(plan, {"a": a, "b": b}, ["/bin/true"], unshare=True, state_dir=state_dir)
    finally:
        os.close(a)
        os.close(b)


# --------------------------------------------------------------------------- issue 11: kernel check


#: Profiles taking away a syscall apply cannot work without (decided at collection).
REFUSING = {
    name: first
    for name, profile in sorted(PROFILES.items())
    if (first := next((n for n in REQUIRED if profile.denied.get(n) == errno.ENOSYS), None)) is not None
}


@pytest.mark.parametrize(("profile", "syscall"), sorted(REFUSING.items()))
def test_unshare_on_a_kernel_without_the_syscalls_exits_5_with_the_version(
    small_plan_path: str, root_dir: str, state_dir: str, profile: str, syscall: str
) -> None:
    """`run --unshare` under an emulated old kernel: exit 5 naming the syscall and its version, no traceback."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mountplan._kernel.seccomp",
            profile,
            "--",
            *run_argv(small_plan_path, root_dir, state_dir, "/bin/true"),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 5, result.stderr
    assert f"{syscall}: ENOSYS" in result.stderr and f"needs Linux {SINCE[syscall]}" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(root_dir) == []
