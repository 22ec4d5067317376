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


class _SwapAfterCreate(KernelBackend):
    """Right after mkdirat/symlinkat makes ``x``, another process swaps its own object in at that name."""

    def __init__(self, how: str) -> None:
        self.how = how

    def mkdirat(self, dirfd: int, name: str, mode: int, shown: str = "") -> None:  # type: ignore[override]
        KernelBackend.mkdirat(dirfd, name, mode, shown=shown)
        if name == "x":
            os.rmdir(name, dir_fd=dirfd)
            os.mkdir(name, 0o700, dir_fd=dirfd)
            if self.how == "filled":
                os.close(os.open(f"{name}/theirs", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dirfd))
            else:  # empty, but with a mode mkdirat(0750) cannot have made
                os.chmod(name, 0o777, dir_fd=dirfd)

    def symlinkat(self, target: str, dirfd: int, name: str, shown: str = "") -> None:  # type: ignore[override]
        KernelBackend.symlinkat(target, dirfd, name, shown=shown)
        if name == "x":
            os.unlink(name, dir_fd=dirfd)
            os.symlink("/etc", name, dir_fd=dirfd)


@pytest.mark.parametrize("how", ["filled", "mode", "symlink"])
def test_an_object_swapped_in_right_after_the_create_is_not_taken_over(tmp_path: Path, root_dir: str, how: str) -> None:
    """mkdirat/symlinkat, then someone swaps their own object in: apply fails; theirs is not chmod'ed, recorded or removed."""
    spec = (ObjectSpec("x", R, "x", ObjectKind.SYMLINK, link="/proc/self/fd") if how == "symlink"
            else ObjectSpec("x", R, "x", ObjectKind.DIRECTORY, mode=0o750))
    engine = _engine(tmp_path, _SwapAfterCreate(how))
    with pytest.raises(ExecutionError) as info:
        engine.apply(_plan(spec), {R: root_dir})
    assert info.value.leftovers == () and "not taken over" in str(info.value)
    if how == "symlink":
        assert os.readlink(f"{root_dir}/x") == "/etc"
    else:
        assert stat.S_IMODE(os.lstat(f"{root_dir}/x").st_mode) == (0o700 if how == "filled" else 0o777)
        assert os.listdir(f"{root_dir}/x") == (["theirs"] if how == "filled" else [])
    _, state = engine.load_state(_plan(spec), {R: root_dir})
    assert state is None or state.objects == []
    assert [n for n in os.listdir(tmp_path / "state") if n.endswith(".journal")] == []


class _KillAt(KernelBackend):
    """SIGKILLs this process when ``name`` is called: before the call, or (``after``) once it returned."""

    def __init__(self, name: str, *, after: bool = False) -> None:
        self.name, self.after = name, after

    def __getattribute__(self, attr: str) -> Any:
        value = object.__getattribute__(self, attr)
        if attr != object.__getattribute__(self, "name"):
            return value
        after = object.__getattribute__(self, "after")

        def killed(*args: Any, **kwargs: Any) -> Any:
            if after:
                value(*args, **kwargs)
            os.kill(os.getpid(), 9)

        return killed


def _killed_apply(state_dir: str, plan: Plan, root_dir: str, backend: KernelBackend) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            Engine(backend=backend, state_dir=state_dir).apply(plan, {R: root_dir})
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)


def _journal(state_dir: str) -> Path:
    (journal,) = [p for p in Path(state_dir).iterdir() if p.name.endswith(".journal")]
    return journal


def test_recover_keeps_a_users_file_that_got_our_inode_number(tmp_path: Path, root_dir: str) -> None:
    """Killed after our file's create was journaled with its inode; the user writes their own file there and
    the filesystem hands it the same inode number (ext4 does at once): recover keeps their data."""
    import json

    state_dir = str(tmp_path / "state")
    plan = _plan(_file("d/f", 0o644))
    os.mkdir(f"{root_dir}/d")
    _killed_apply(state_dir, plan, root_dir, _KillAt("fchmod"))
    path = f"{root_dir}/d/f"
    ours = os.lstat(path)
    for _ in range(20):
        os.unlink(path)
        Path(path).write_text("user data")
        if os.lstat(path).st_ino == ours.st_ino:
            break
    else:
        # This filesystem did not hand the number out again: write into the journal what
        # it would have held if it had (only the inode number; dev and birth time stay ours).
        theirs = os.lstat(path).st_ino
        lines = [json.loads(line) for line in _journal(state_dir).read_text().splitlines()]
        for entry in lines:
            if entry.get("op") == "created" and entry.get("ino") == ours.st_ino:
                entry["ino"] = theirs
        _journal(state_dir).write_text("".join(json.dumps(e) + "\n" for e in lines))
    result = Engine(state_dir=state_dir).recover()
    assert Path(path).read_text() == "user data"
    assert len(result.leftovers) == 1 and "not the file mountplan made" in result.leftovers[0]


def test_recover_without_a_created_line_keeps_a_file_it_cannot_prove_is_ours(tmp_path: Path, root_dir: str) -> None:
    """Killed between the create and its ``created`` line; the user then put their data there: it is kept."""
    state_dir = str(tmp_path / "state")
    plan = _plan(_file("f", 0o644))
    _killed_apply(state_dir, plan, root_dir, _KillAt("create_file", after=True))
    assert '"created"' not in _journal(state_dir).read_text()
    os.unlink(f"{root_dir}/f")
    Path(root_dir, "f").write_text("user data")
    result = Engine(state_dir=state_dir).recover()
    assert Path(root_dir, "f").read_text() == "user data"
    assert len(result.leftovers) == 1 and "no inode was recorded" in result.leftovers[0]


def test_the_created_journal_line_records_the_birth_time(tmp_path: Path, root_dir: str) -> None:
    """The ``created`` line of an object (and of a parent made for it) carries the birth time statx reports."""
    import json

    from mountplan._kernel import AtFlag, root_evidence

    state_dir = str(tmp_path / "state")
    _killed_apply(state_dir, _plan(_file("d/f", 0o644)), root_dir, _KillAt("fchmod"))
    created = {e["ino"]: e.get("btime") for e in map(json.loads, _journal(state_dir).read_text().splitlines())
               if e.get("op") == "created"}
    root_fd = os.open(root_dir, os.O_PATH | os.O_CLOEXEC)
    for path in ("d", "d/f"):
        st = os.lstat(f"{root_dir}/{path}")
        assert created[st.st_ino] == root_evidence(root_fd, path, AtFlag(0)).btime_ns
    os.close(root_fd)


def _inotify_open_events(path: str) -> tuple[int, Any]:
    """An inotify fd watching ``path`` for IN_OPEN (an O_PATH open is not one), and a reader of its event count."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, path.encode(), 0x20) >= 0  # IN_OPEN

    def count() -> int:
        try:
            return len(os.read(fd, 65536)) // 16  # struct inotify_event without a name (a watch on the file itself)
        except BlockingIOError:
            return 0

    return fd, count


def test_a_mode_fix_never_opens_the_object(tmp_path: Path, root_dir: str) -> None:
    """Fixing and restoring a mode goes through an O_PATH fd: the object itself is never opened (no IN_OPEN)."""
    engine = _engine(tmp_path)
    plan = _plan(_file("f", 0o640))
    engine.apply(plan, {R: root_dir})
    os.chmod(f"{root_dir}/f", 0o000)
    fd, opened = _inotify_open_events(f"{root_dir}/f")
    try:
        assert engine.apply(plan, {R: root_dir}).updated == ("f",)
        assert stat.S_IMODE(os.lstat(f"{root_dir}/f").st_mode) == 0o640
        assert opened() == 0
    finally:
        os.close(fd)
