"""SIGKILL at any point of an apply: recover (or the next apply/destroy) restores the original state."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _plans
import pytest

from mountplan import api
from mountplan.engine import Engine
from mountplan.engine.backend import KernelBackend
from mountplan.model import Plan

pytestmark = pytest.mark.mountns

MOUNTPLAN = os.path.join(os.path.dirname(sys.executable), "mountplan")
KILLS = 50
SEED = 20240229


def _setup(tmp_path: Path, root_dir: str) -> tuple[str, str, str]:
    host = str(tmp_path / "host")
    os.makedirs(host)
    _plans.prepare_host_dir(host)
    plan_file = str(tmp_path / "kill.yaml")
    Path(plan_file).write_text(_plans.kill_plan_yaml(host))
    return host, plan_file, str(tmp_path / "state")


def _cli(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([MOUNTPLAN, *args, "-q"], check=False, capture_output=True, text=True, timeout=60)
    if check is not None:
        assert proc.returncode == check, f"mountplan {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def _journal(state_dir: str) -> str | None:
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return None
    return next((os.path.join(state_dir, n) for n in names if n.endswith(".journal")), None)


def _committed(state_dir: str) -> bool:
    return os.path.isdir(state_dir) and any(n.endswith(".state.json") for n in os.listdir(state_dir))


def _run_and_kill(args: list[str], state_dir: str, delay: float) -> tuple[int, int]:
    """Start ``mountplan apply``, wait for its journal, sleep ``delay`` and SIGKILL it.

    Returns the journal's line count at the kill (how far it got; -1 if it had
    already finished) and the exit status.
    """
    proc = subprocess.Popen([MOUNTPLAN, *args, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while _journal(state_dir) is None and proc.poll() is None:
        assert time.monotonic() < deadline, "apply never opened its journal"
        time.sleep(0.0005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    status = proc.wait()
    journal = _journal(state_dir)
    lines = Path(journal).read_bytes().count(b"\n") if journal else -1
    return lines, status


def _engine_window(plan_file: str, root_dir: str, state_dir: str) -> float:
    """Seconds the journal of a clean CLI apply exists: the time its engine works (then destroyed)."""
    proc = subprocess.Popen([MOUNTPLAN, "apply", plan_file, "--root", f"r={root_dir}", "--state-dir", state_dir, "-q"])
    while _journal(state_dir) is None and proc.poll() is None:
        time.sleep(0.0002)
    start = time.monotonic()
    while _journal(state_dir) is not None:
        time.sleep(0.0002)
    window = time.monotonic() - start
    assert proc.wait() == 0
    _cli("destroy", plan_file, "--root", f"r={root_dir}", "--state-dir", state_dir)
    return window


def test_cli_apply_killed_at_random_points_is_recovered(root_dir: str, tmp_path: Path) -> None:
    """A real `mountplan apply` of a 36-mount plan, SIGKILLed at 50 seeded random points while it runs,
    is fully undone by `mountplan recover` (or by the next `apply` + `destroy`, or by `destroy`, which
    recover first): the mount table, the root and the host bind source are as before, no journal remains.
    """
    host, plan_file, state_dir = _setup(tmp_path, root_dir)
    run = ["--root", f"r={root_dir}", "--state-dir", state_dir]
    assert _cli("validate", plan_file).returncode == 0
    before = _plans.snapshot(root_dir, host)
    # The shortest of three: one run slowed by a busy machine would stretch the
    # window and send most kills past the end of the engine's work.
    window = min(_engine_window(plan_file, root_dir, state_dir) for _ in range(3))
    rng = random.Random(SEED)
    progress: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    for i in range(KILLS):
        # Mostly inside the engine's run, some past its end (a kill after the commit is fine too).
        delay = rng.uniform(0, window * 1.1)
        lines, status = _run_and_kill(["apply", plan_file, *run], state_dir, delay)
        progress[lines] += 1
        variant = ("recover", "recover", "recover", "destroy", "recover", "recover", "recover", "apply")[i % 8]
        if variant == "recover":
            _cli("recover", "--state-dir", state_dir)
            if _committed(state_dir):  # killed after the commit: the apply is whole, not half
                outcomes["committed"] += 1
                _cli("destroy", plan_file, *run)
        elif variant == "apply":
            out = _cli("apply", plan_file, *run).stdout
            assert "36 created" in out or "36 unchanged" in out, out
            _cli("destroy", plan_file, *run)
        else:
            _cli("destroy", plan_file, *run)
        outcomes[variant] += 1
        after = _plans.snapshot(root_dir, host)
        assert (after.table, after.files) == (before.table, before.files), (
            f"kill {i} ({variant}, delay {delay * 1000:.1f} ms, journal lines {lines}, status {status}):\n"
            + _plans.diff(before, after)
        )
        assert _journal(state_dir) is None and not _committed(state_dir), os.listdir(state_dir)
    # The kills landed at many different steps, not all before or after the engine's work.
    interrupted = [n for n in progress if n > 0]
    assert len(interrupted) >= 25, sorted(progress.items())
    print(f"window {window * 1000:.1f} ms; journal lines at kill: {sorted(progress.items())}; {dict(outcomes)}")


class _KillAt:
    """Backend that SIGKILLs its own process just before (or just after) its ``at``-th call."""

    def __init__(self, at: int, *, after: bool) -> None:
        self._inner = KernelBackend()
        self.at = at
        self.after = after
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        func = getattr(self._inner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            if self.count == self.at and not self.after:
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                return func(*args, **kwargs)
            finally:  # after the call, whether it succeeded or raised
                if self.count == self.at and self.after:
                    os.kill(os.getpid(), signal.SIGKILL)

        return wrapper


def _apply_killed(plan: Plan, root_dir: str, state_dir: str, at: int, *, after: bool) -> None:
    """Apply in a forked child that SIGKILLs itself around call ``at``; assert it died of SIGKILL."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            Engine(backend=_KillAt(at, after=after), state_dir=state_dir).apply(plan, {"r": root_dir})
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"call {at}: status {status:#x}"


def _count_calls(plan: Plan, root_dir: str, state_dir: str) -> int:
    counter = _KillAt(0, after=False)
    engine = Engine(backend=counter, state_dir=state_dir)
    engine.apply(plan, {"r": root_dir})
    n = counter.count
    engine.destroy(plan, {"r": root_dir})
    return n


STRIDE = 3


def test_kill_around_every_third_call_is_recovered(root_dir: str, tmp_path: Path) -> None:
    """An apply killed right before or right after one of its backend calls (every third call, before
    and after alternating; ~150 kills) leaves a journal from which Engine.recover restores the
    original state exactly.
    """
    host, plan_file, state_dir = _setup(tmp_path, root_dir)
    plan = api.load(plan_file)
    n_calls = _count_calls(plan, root_dir, state_dir)
    before = _plans.snapshot(root_dir, host)
    for at in range(1, n_calls + 1, STRIDE):
        _apply_killed(plan, root_dir, state_dir, at, after=at % 2 == 0)
        result = Engine(state_dir=state_dir).recover()
        assert result.leftovers == (), (at, result.leftovers)
        after = _plans.snapshot(root_dir, host)
        assert (after.table, after.files) == (before.table, before.files), f"call {at}:\n{_plans.diff(before, after)}"
        assert _journal(state_dir) is None and not _committed(state_dir)
    assert n_calls > 300


def _foreign_tmpfs(path: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "foreign", path], check=True)


def _foreign_mounted(path: str) -> bool:
    return any(
        line.split()[4] == path and line.split(" - ")[1].split()[1] == "foreign"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def _nth_move_mount(plan: Plan, root_dir: str, state_dir: str, n: int) -> int:
    """1-based index, among all backend calls, of the ``n``-th move_mount of a clean apply."""
    calls: list[str] = []

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(KernelBackend(), name)

    engine = Engine(backend=Recorder(), state_dir=state_dir)
    engine.apply(plan, {"r": root_dir})
    engine.destroy(plan, {"r": root_dir})
    return [i for i, name in enumerate(calls, 1) if name == "move_mount"][n - 1]


def test_recover_leaves_a_foreign_mount_on_a_target_it_journaled(root_dir: str, tmp_path: Path) -> None:
    """Killed after journaling a mount but before its move_mount; someone else then mounts on that
    target. `mountplan recover` undoes everything of ours, leaves the foreign mount alone (and the
    mountpoint under it, as a reported leftover); once it is gone, a second recover finishes.
    """
    host, plan_file, state_dir = _setup(tmp_path, root_dir)
    plan = api.load(plan_file)
    before = _plans.snapshot(root_dir, host)
    victim = plan.mounts[10]  # t03: dirs/d3/t03, its directories made in the root itself
    assert victim.name == "t03"
    at = _nth_move_mount(plan, root_dir, state_dir, 11)
    _apply_killed(plan, root_dir, state_dir, at, after=False)
    target = os.path.join(root_dir, victim.target)
    assert os.path.isdir(target) and not os.path.ismount(target)
    _foreign_tmpfs(target)
    proc = _cli("recover", "--state-dir", state_dir, check=None)
    assert _foreign_mounted(target), "recover unmounted a mount mountplan did not make"
    assert proc.returncode == 4 and "dirs/d3/t03" in proc.stdout + proc.stderr, proc
    mounted = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    assert {p for p in mounted if p.startswith(root_dir + "/")} == {target}
    subprocess.run(["umount", target], check=True)
    _cli("recover", "--state-dir", state_dir)
    after = _plans.snapshot(root_dir, host)
    assert (after.table, after.files) == (before.table, before.files), _plans.diff(before, after)


def test_recover_after_foreign_overmount_eventually_removes_our_hidden_mount(root_dir: str, tmp_path: Path) -> None:
    """Killed right after a move_mount; someone then mounts on top of our mount. recover must not unmount
    the foreign mount, must not claim ours undone, and once the foreign mount is gone a second recover
    must restore the original table.
    """
    host, plan_file, state_dir = _setup(tmp_path, root_dir)
    plan = api.load(plan_file)
    before = _plans.snapshot(root_dir, host)
    victim = plan.mounts[10]
    at = _nth_move_mount(plan, root_dir, state_dir, 11)
    _apply_killed(plan, root_dir, state_dir, at, after=True)
    target = os.path.join(root_dir, victim.target)
    assert os.path.ismount(target)
    _foreign_tmpfs(target)
    result = Engine(state_dir=state_dir).recover()
    assert _foreign_mounted(target), "recover unmounted a mount mountplan did not make"
    assert not any("'t03'" in item for item in result.undone), result.undone
    subprocess.run(["umount", target], check=True)
    Engine(state_dir=state_dir).recover()
    after = _plans.snapshot(root_dir, host)
    assert (after.table, after.files) == (before.table, before.files), _plans.diff(before, after)
