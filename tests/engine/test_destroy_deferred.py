"""Destroy leaves the mountpoints made in a tmpfs of ours to that tmpfs's unmount, and removes them if it stays."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import _plans
import pytest

from mountplan.engine import Engine, FaultInjector
from mountplan.errors import BusyError
from mountplan.model import MountpointKind, MountpointSpec, Plan, RootSpec, SourceRef

pytestmark = pytest.mark.mountns

PLAN = Plan(
    name="deferred",
    roots=(RootSpec("r"),),
    mounts=(
        _plans.tmpfs("outer", "a"),
        _plans.tmpfs("inner", "a/b/c"),
        _plans.bind(
            "null", "a/null", SourceRef("/dev/null"), recursive=False,
            mountpoint=MountpointSpec(kind=MountpointKind.FILE, mode=0o644),
        ),
    ),
)


#: Two more mounts whose mountpoints share a directory one of them made (a/p): removed innermost first.
NESTED = Plan(
    name="deferred-nested",
    roots=PLAN.roots,
    mounts=(*PLAN.mounts, _plans.tmpfs("q", "a/p/q"), _plans.tmpfs("r", "a/p/r")),
)


def _mounted(path: str) -> bool:
    return any(line.split()[4] == path for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_mountpoints_on_a_mount_destroy_unmounts_next_go_with_it(root_dir: str, tmp_path: Path) -> None:
    """destroy unlinks only the mountpoint made in the root itself (a): a/b, a/b/c and a/null lie on the
    tmpfs at a, which it unmounts after them; the root ends as it began."""
    before = _plans.snapshot(root_dir)
    state_dir = str(tmp_path / "state")
    Engine(state_dir=state_dir).apply(PLAN, {"r": root_dir})
    assert os.path.isdir(os.path.join(root_dir, "a/b/c")) and os.path.exists(os.path.join(root_dir, "a/null"))
    recorder = FaultInjector()
    Engine(backend=recorder, state_dir=state_dir).destroy(PLAN, {"r": root_dir})
    assert recorder.calls.count("umount_at") == 3
    assert recorder.calls.count("unlinkat") == 1
    after = _plans.snapshot(root_dir)
    assert (after.table, after.files) == (before.table, before.files), _plans.diff(before, after)


def test_deferred_mountpoints_are_removed_when_their_mount_stays(root_dir: str, tmp_path: Path) -> None:
    """When the mount holding them cannot be unmounted (a busy tmpfs at a), destroy still removes the
    mountpoints it made on it (a/b, a/b/c, a/null, a/p/q, a/p/r and a/p, innermost first) before reporting:
    it ends as it did before deferring."""
    subprocess.run(["mount", "-t", "proc", "proc", "/proc"], check=True)  # holders are named from this pid ns
    before = _plans.snapshot(root_dir)
    engine = Engine(state_dir=str(tmp_path / "state"))
    engine.apply(NESTED, {"r": root_dir})
    busy = os.open(os.path.join(root_dir, "a", "held"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with pytest.raises(BusyError) as info:
            engine.destroy(NESTED, {"r": root_dir})
        assert list(info.value.leftovers) == ["outer"]
        outer = os.path.join(root_dir, "a")
        assert _mounted(outer) and not _mounted(os.path.join(outer, "b/c")) and not _mounted(os.path.join(outer, "p/r"))
        assert sorted(os.listdir(outer)) == ["held"]
    finally:
        os.close(busy)
    os.unlink(os.path.join(root_dir, "a", "held"))
    engine.destroy(NESTED, {"r": root_dir})
    after = _plans.snapshot(root_dir)
    assert (after.table, after.files) == (before.table, before.files), _plans.diff(before, after)


def test_mountpoints_in_a_bind_are_removed_before_it_goes(root_dir: str, tmp_path: Path) -> None:
    """A bind's unmount leaves what it showed in place: the mountpoint destroy made through a bind of a
    host directory (a/sub) is removed one by one as ever, and the host directory ends as it began."""
    host = tmp_path / "host"
    host.mkdir()
    plan = Plan(
        name="through-a-bind",
        roots=(RootSpec("r"),),
        mounts=(_plans.bind("outer", "a", SourceRef(str(host)), recursive=False), _plans.tmpfs("inner", "a/sub")),
    )
    before = _plans.snapshot(root_dir)
    engine = Engine(state_dir=str(tmp_path / "state"))
    engine.apply(plan, {"r": root_dir})
    assert (host / "sub").is_dir()
    engine.destroy(plan, {"r": root_dir})
    assert list(host.iterdir()) == []
    after = _plans.snapshot(root_dir)
    assert (after.table, after.files) == (before.table, before.files), _plans.diff(before, after)
