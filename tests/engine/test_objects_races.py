"""Planned objects under attack: path changes, races at the seams, vanished and reused inodes.

Each test reproduces a finding of the review of planned objects on the real
kernel: an object moved in the plan, a directory swapped in right after
mkdirat, an inode number handed out again after a killed apply, an object that
vanishes after its mode change was journaled, a foreign object at a planned
path. None of them may leave anything of ours behind or touch anything not ours.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import _plans
import pytest

from mountplan.changes import Action
from mountplan.engine import Engine
from mountplan.engine.backend import KernelBackend
from mountplan.errors import ExecutionError, KernelError
from mountplan.model import ObjectKind, ObjectSpec, Plan, RootSpec

pytestmark = pytest.mark.mountns

R = _plans.ROOT


def _plan(*objects: ObjectSpec) -> Plan:
    return Plan(name="races", roots=(RootSpec(R),), mounts=(), objects=objects)


def _file(path: str, mode: int = 0o644, name: str = "f") -> ObjectSpec:
    return ObjectSpec(name, R, path, ObjectKind.FILE, mode=mode)


def _engine(tmp_path: Path, backend: Any = None) -> Engine:
    return Engine(state_dir=str(tmp_path / "state"), backend=backend)


def test_a_moved_object_is_replaced_and_destroy_leaves_the_root_empty(tmp_path: Path, root_dir: str) -> None:
    """The plan moves file ``f`` from a/one to b/two: -/+ (path forces replacement); destroy leaves nothing."""
    engine = _engine(tmp_path)
    before = _plans.snapshot(root_dir)
    engine.apply(_plan(_file("a/one")), {R: root_dir})
    moved = _plan(_file("b/two"))
    (change,) = engine.plan(moved, {R: root_dir}).changes
    assert change.action is Action.REPLACE and change.reason == "path forces replacement"
    assert [(f.field, f.live, f.planned) for f in change.fields] == [("path", "r:a/one", "r:b/two")]
    assert engine.apply(moved, {R: root_dir}).replaced == ("f",)
    assert not os.path.exists(f"{root_dir}/a") and stat.S_ISREG(os.lstat(f"{root_dir}/b/two").st_mode)
    assert not engine.plan(moved, {R: root_dir}).has_changes
    engine.destroy(moved, {R: root_dir})
    assert _plans.snapshot(root_dir) == before


class _LoseOnChmod(KernelBackend):
    """fchmod works, then the object is removed (or replaced by someone else's file) and the call fails."""

    def __init__(self, path: str, how: str) -> None:
        self.path, self.how, self.armed = path, how, False

    def fchmod(self, fd: int, mode: int, shown: str = "") -> None:  # type: ignore[override]
        KernelBackend.fchmod(fd, mode, shown=shown)
        if self.armed:
            os.unlink(self.path)
            if self.how == "replaced":
                Path(self.path).write_text("theirs\n")
                os.chmod(self.path, 0o640)
            raise KernelError(errno.EIO, "fchmod", hint="injected fault")


@pytest.mark.parametrize("how", ["gone", "replaced"])
def test_a_journaled_mode_change_on_a_lost_object_does_not_block_later_runs(tmp_path: Path, root_dir: str, how: str) -> None:
    """The object goes (or is replaced) after its mode fix was journaled: rollback is complete; apply and destroy go on."""
    backend = _LoseOnChmod(f"{root_dir}/f", how)
    engine = _engine(tmp_path, backend)
    plan = _plan(_file("f", 0o644))
    engine.apply(plan, {R: root_dir})
    os.chmod(f"{root_dir}/f", 0o600)  # drift: the next apply fixes it in place (journaled "chmod")
    backend.armed = True
    with pytest.raises(ExecutionError) as info:
        engine.apply(plan, {R: root_dir})
    assert info.value.leftovers == ()
    backend.armed = False
    if how == "replaced":
        assert Path(root_dir, "f").read_text() == "theirs\n" and stat.S_IMODE(os.lstat(f"{root_dir}/f").st_mode) == 0o640
        os.unlink(f"{root_dir}/f")  # the user takes theirs away; ours is made again
    assert engine.apply(plan, {R: root_dir}).created == ("f",)
    engine.destroy(plan, {R: root_dir})
    assert os.listdir(root_dir) == []


def test_recover_of_a_mode_change_on_a_vanished_object_is_done(tmp_path: Path, root_dir: str) -> None:
    """Killed after a journaled mode fix; the object is then deleted: recover has nothing left to undo."""
    plan = _plan(_file("f", 0o644))
    state_dir = str(tmp_path / "state")
    Engine(state_dir=state_dir).apply(plan, {R: root_dir})
    os.chmod(f"{root_dir}/f", 0o600)
    pid = os.fork()
    if pid == 0:
        try:
            Engine(backend=_KillOn("fchmod"), state_dir=state_dir).apply(plan, {R: root_dir})
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    os.unlink(f"{root_dir}/f")
    result = Engine(state_dir=state_dir).recover()
    assert result.leftovers == ()
    Engine(state_dir=state_dir).destroy(plan, {R: root_dir})
    assert os.listdir(root_dir) == []


class _KillOn(KernelBackend):
    """SIGKILLs this process when ``name`` is called (before it runs)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattribute__(self, attr: str) -> Any:
        if attr != "name" and attr == object.__getattribute__(self, "name"):
            os.kill(os.getpid(), 9)
        return object.__getattribute__(self, attr)


def test_apply_refuses_a_known_problem_before_changing_anything(tmp_path: Path, root_dir: str) -> None:
    """A foreign file at a planned path: apply fails up front, listing it; no syscall changes anything, the record stays."""
    from mountplan.engine.backend import FaultInjector

    plan = Plan(name="races", roots=(RootSpec(R),), mounts=(_plans.tmpfs("m", "m"),),
                objects=(_file("f"), ObjectSpec("l", R, "l", ObjectKind.SYMLINK, link="/old")))
    engine = _engine(tmp_path)
    engine.apply(plan, {R: root_dir})
    engine.destroy(plan, {R: root_dir})
    # "l" is ours (recorded) and must be replaced; "f" is someone else's file now.
    engine.apply(_plan(ObjectSpec("l", R, "l", ObjectKind.SYMLINK, link="/old")), {R: root_dir})
    Path(root_dir, "f").write_text("theirs\n")
    new = Plan(name="races", roots=(RootSpec(R),), mounts=(_plans.tmpfs("m", "m"),),
               objects=(_file("f"), ObjectSpec("l", R, "l", ObjectKind.SYMLINK, link="/new")))
    problems = engine.plan(new, {R: root_dir}).problems
    assert len(problems) == 1 and problems[0].startswith("f (r:f): EEXIST")
    before = _plans.snapshot(root_dir)
    watch = FaultInjector()
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path, watch).apply(new, {R: root_dir})
    assert problems[0] in str(info.value) and info.value.step == "" and info.value.leftovers == ()
    assert not {"fsopen", "symlinkat", "unlinkat", "create_file", "mkdirat"} & set(watch.calls), watch.calls
    assert _plans.snapshot(root_dir) == before and os.readlink(f"{root_dir}/l") == "/old"
    _, state = engine.load_state(new, {R: root_dir})
    assert [o.name for o in state.objects] == ["l"]  # the record of ours was not dropped
