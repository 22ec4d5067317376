"""Busy mounts: destroy names the holder and loses nothing; a rollback that hits one leaves a journal recover can finish."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import _plans
import pytest

from mountplan.engine import Engine
from mountplan.engine.backend import KernelBackend
from mountplan.engine.roots import open_roots
from mountplan.errors import BusyError, ExecutionError, KernelError
from mountplan.model import Plan, RootSpec

pytestmark = pytest.mark.mountns

PLAN = Plan(
    name="busy",
    roots=(RootSpec("r"),),
    mounts=(
        *_plans.tmpfs_plan(12, fanout=4).mounts,
        _plans.tmpfs("leaf", "leaf/dir"),
        _plans.tmpfs("last", "zz/last"),
    ),
)


def _own_proc() -> None:
    """Mount a proc of this pid namespace on /proc, so pids in holder reports are the ones fork returns."""
    subprocess.run(["mount", "-t", "proc", "proc", "/proc"], check=True)


class _Holder:
    """A process that holds a path busy (cwd inside it, or an open fd on a file in it) until released.

    It is exec'ed, not just forked: a forked child would also inherit the engine's
    flock'ed state lock fd and keep the instance locked.
    """

    _CODE = (
        "import os, sys\n"
        "if sys.argv[1] == 'fd':\n"
        "    fd = os.open(os.path.join(sys.argv[2], 'held'), os.O_RDWR | os.O_CREAT, 0o600)\n"
        "sys.stdout.write('ready'); sys.stdout.flush(); sys.stdin.read()\n"
    )

    def __init__(self, path: str, how: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self._CODE, how, path],
            cwd=path if how == "cwd" else "/",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stdout.read(5) == b"ready"
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0
        self.proc.stdout.close()


def _names_in_table(root_dir: str) -> set[str]:
    """Sources (our tmpfs mounts are named after their mount) of every mount beneath ``root_dir``."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return {line.split(" - ")[1].split()[1] for line in lines if line.split()[4].startswith(root_dir + "/")}


@pytest.mark.parametrize("how", ["cwd", "fd"])
def test_destroy_of_busy_mount_names_holder_and_loses_nothing(root_dir: str, tmp_path: Path, how: str) -> None:
    """destroy stops at a mount a process holds (cwd inside, or an open fd) with BusyError naming its pid and
    what it holds; mounts not yet removed stay mounted and in the state; a lazy destroy then detaches them.
    """
    _own_proc()
    state_dir = str(tmp_path / "state")
    before = _plans.snapshot(root_dir)
    engine = Engine(state_dir=state_dir)
    engine.apply(PLAN, {"r": root_dir})
    holder = _Holder(os.path.join(root_dir, "leaf/dir"), how)
    with pytest.raises(BusyError) as info:
        engine.destroy(PLAN, {"r": root_dir})
    err = info.value
    what = "cwd" if how == "cwd" else f"-> {root_dir}/leaf/dir/held"
    assert any(h.startswith(f"pid {holder.pid} (") and what in h for h in err.holders), err.holders
    assert f"pid {holder.pid}" in str(err) and "--lazy" in str(err)
    assert err.step == "leaf#00:unmount"
    # 'last' (after 'leaf' in plan order) was destroyed first; everything from 'leaf' on is kept.
    _, state = engine.load_state(PLAN, {"r": root_dir})
    assert state is not None
    kept = {m.name for m in state.mounts}
    assert kept == {m.name for m in PLAN.mounts} - {"last"} == set(err.leftovers)
    with open_roots({"r": root_dir}, ["r"]) as rootset:
        assert all(engine.mount_is_ours(rootset["r"], m.target, m.mnt_id) for m in state.mounts)
    assert _names_in_table(root_dir) == kept
    assert os.path.exists(os.path.join(root_dir, "zz")) is False
    result = Engine(state_dir=state_dir, lazy=True).destroy(PLAN, {"r": root_dir})
    assert set(result.removed) == kept
    after = _plans.snapshot(root_dir)
    assert (after.table, after.files) == (before.table, before.files), _plans.diff(before, after)
    holder.release()


class _BusyBeforeFailure:
    """On the ``fail_at``-th move_mount, start a holder with its cwd in ``hold``, then fail that call."""

    def __init__(self, fail_at: int, hold: str) -> None:
        self._inner = KernelBackend()
        self.fail_at = fail_at
        self.hold = hold
        self.moves = 0
        self.holder: _Holder | None = None

    def __getattr__(self, name: str) -> Any:
        func = getattr(self._inner, name)
        if name != "move_mount":
            return func

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.moves += 1
            if self.moves == self.fail_at:
                self.holder = _Holder(self.hold, "cwd")
                raise KernelError(errno.EIO, "move_mount", hint="injected fault")
            return func(*args, **kwargs)

        return wrapper


def test_rollback_blocked_by_busy_mount_is_finished_by_recover(root_dir: str, tmp_path: Path) -> None:
    """When rollback cannot unmount a mount a process holds, ExecutionError lists it (and its mountpoint)
    in leftovers naming the holder, the journal keeps exactly those, and recover after the holder exits
    removes them and leaves the mount table and the root as they were.
    """
    _own_proc()
    state_dir = str(tmp_path / "state")
    before = _plans.snapshot(root_dir)
    mount_order = [m.name for m in PLAN.mounts]
    backend = _BusyBeforeFailure(mount_order.index("last") + 1, os.path.join(root_dir, "leaf/dir"))
    engine = Engine(backend=backend, state_dir=state_dir)
    with pytest.raises(ExecutionError) as info:
        engine.apply(PLAN, {"r": root_dir})
    err = info.value
    assert backend.holder is not None
    assert err.step == "last#07:move_mount" and "Rollback was incomplete" in str(err)
    # The mount, its mountpoint (still covered by it) and the directory above that (not empty).
    assert len(err.leftovers) == 3, err.leftovers
    assert "mount 'leaf' at r:leaf/dir" in err.leftovers[0] and f"pid {backend.holder.pid}" in err.leftovers[0]
    assert err.leftovers[1].startswith("directory r:leaf/dir created for 'leaf'")
    assert err.leftovers[2].startswith("directory r:leaf created for 'leaf'") and "ENOTEMPTY" in err.leftovers[2]
    # Everything else was undone; the busy mount is still there.
    assert _names_in_table(root_dir) == {"leaf"}
    store, state = engine.load_state(PLAN, {"r": root_dir})
    assert state is None
    entries = store.journal_read()
    undone = {e["ref"] for e in entries if e.get("op") == "undone"}
    pending = {(e["op"], e["path"]) for e in entries if e.get("op") in {"mount", "mkdir", "mkfile"} and e["seq"] not in undone}
    assert pending == {("mount", "leaf/dir"), ("mkdir", "leaf/dir"), ("mkdir", "leaf")}, pending

    # While the holder lives, recover keeps the journal and reports the same leftovers.
    still = Engine(state_dir=state_dir).recover()
    assert still.leftovers and os.path.exists(store.journal_path)
    backend.holder.release()
    result = Engine(state_dir=state_dir).recover()
    assert result.leftovers == () and any("mount 'leaf'" in u for u in result.undone), result
    after = _plans.snapshot(root_dir)
    assert (after.table, after.files) == (before.table, before.files), _plans.diff(before, after)
    assert not os.path.exists(store.journal_path)


def test_rollback_leftovers_match_what_is_still_mounted_when_a_nested_mount_is_held(
    root_dir: str, tmp_path: Path
) -> None:
    """When rollback meets a nested mount a process holds, the mounts ExecutionError.leftovers says are
    left behind are exactly the mounts still in the table (no lazy detach of its idle parent behind the
    report's back), and recover finishes once the holder exits.
    """
    _own_proc()
    state_dir = str(tmp_path / "state")
    mount_order = [m.name for m in PLAN.mounts]
    nested = next(m for m in PLAN.mounts if m.target.count("/") == 1 and m.target.startswith("t"))
    backend = _BusyBeforeFailure(mount_order.index("last") + 1, os.path.join(root_dir, nested.target))
    with pytest.raises(ExecutionError) as info:
        Engine(backend=backend, state_dir=state_dir).apply(PLAN, {"r": root_dir})
    assert backend.holder is not None
    table = _names_in_table(root_dir)
    claimed = {m.name for m in PLAN.mounts if any(f"mount {m.name!r} " in item for item in info.value.leftovers)}
    # What the error says was left behind is exactly what is still mounted.
    assert claimed == table, (claimed, table, info.value.leftovers)
    backend.holder.release()
    Engine(state_dir=state_dir).recover()
    assert _names_in_table(root_dir) == set()
