"""Planned objects (directories, files, symlinks) on the real kernel: made, kept, fixed, removed, undone.

Each object is made relative to its parent opened beneath the root, journaled
with its undo, and removed only while it is still the inode apply made. The
hostile-root tests plant symlinks where an object or its parent goes; none of
them may make or remove anything outside the root.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from typing import Any

import _plans
import pytest
from _plans import tmpfs

from mountplan.changes import Action
from mountplan.engine import Engine
from mountplan.engine.backend import FaultInjector, KernelBackend
from mountplan.errors import ExecutionError, KernelError, MountplanError
from mountplan.model import ObjectKind, ObjectSpec, Option, Plan, RootSpec

pytestmark = pytest.mark.mountns

R = _plans.ROOT


def _sym(name: str, path: str, link: str) -> ObjectSpec:
    return ObjectSpec(name, R, path, ObjectKind.SYMLINK, link=link)


def _dir(name: str, path: str, mode: int = 0o755) -> ObjectSpec:
    return ObjectSpec(name, R, path, ObjectKind.DIRECTORY, mode=mode)


def _file(name: str, path: str, mode: int = 0o644) -> ObjectSpec:
    return ObjectSpec(name, R, path, ObjectKind.FILE, mode=mode)


def _plan(*objects: ObjectSpec, with_mounts: bool = True, name: str = "objects") -> Plan:
    """A tmpfs ``dev`` holding a symlink, a directory ``work`` with a file and a tmpfs in it, and ``objects``."""
    mounts = (tmpfs("dev", "dev", Option("mode", "0755")), tmpfs("work-m", "work/m")) if with_mounts else ()
    return Plan(name=name, roots=(RootSpec(R),), mounts=mounts, objects=objects)


def _standard() -> Plan:
    return _plan(
        _sym("dev-fd", "dev/fd", "/proc/self/fd"),
        _dir("work", "work", 0o750),
        _file("stamp", "work/deep/stamp", 0o640),
    )


def _engine(tmp_path: Path, backend: Any = None) -> Engine:
    return Engine(state_dir=str(tmp_path / "state"), backend=backend)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_objects_are_made_in_order_with_exact_modes(tmp_path: Path, root_dir: str) -> None:
    """Symlink in the tmpfs, directory under its mount, file with parents; modes exact whatever the umask."""
    old = os.umask(0o077)
    try:
        result = _engine(tmp_path).apply(_standard(), {R: root_dir})
    finally:
        os.umask(old)
    assert set(result.created) == {"dev", "work-m", "dev-fd", "work", "stamp"}
    assert os.readlink(f"{root_dir}/dev/fd") == "/proc/self/fd"
    assert os.path.ismount(f"{root_dir}/dev") and os.path.ismount(f"{root_dir}/work/m")
    assert _mode(f"{root_dir}/work") == 0o750
    assert stat.S_ISREG(os.lstat(f"{root_dir}/work/deep/stamp").st_mode)
    assert _mode(f"{root_dir}/work/deep/stamp") == 0o640


def test_second_apply_changes_nothing(tmp_path: Path, root_dir: str) -> None:
    """Applying the same plan again is a no-op: every object is unchanged, no inode is replaced."""
    engine = _engine(tmp_path)
    plan = _standard()
    engine.apply(plan, {R: root_dir})
    inodes = {p: os.lstat(f"{root_dir}/{p}").st_ino for p in ("dev/fd", "work", "work/deep/stamp")}
    changes = engine.plan(plan, {R: root_dir})
    assert not changes.has_changes and changes.problems == ()
    again = engine.apply(plan, {R: root_dir})
    assert not again.changed and set(again.unchanged) >= {"dev-fd", "work", "stamp"}
    assert inodes == {p: os.lstat(f"{root_dir}/{p}").st_ino for p in inodes}


def test_destroy_removes_objects_and_their_parents(tmp_path: Path, root_dir: str) -> None:
    """Destroy leaves the root exactly as it was: objects, the parents made for them, mountpoints."""
    engine = _engine(tmp_path)
    before = _plans.snapshot(root_dir)
    engine.apply(_standard(), {R: root_dir})
    result = engine.destroy(_standard(), {R: root_dir})
    assert {"dev-fd", "work", "stamp"} <= set(result.removed) and result.kept == ()
    assert _plans.snapshot(root_dir) == before


def test_objects_under_a_missing_parent_cost_one_lookup(tmp_path: Path, root_dir: str) -> None:
    """Before dev is mounted, apply's look at the plan's objects resolves dev once for its three
    symlinks (all absent), then makes them and leaves the same tree as objects looked at one by one."""
    links = [_sym(f"dev-{n}", f"dev/{n}", f"/proc/self/fd/{i}") for i, n in enumerate(("stdin", "stdout", "stderr"))]
    plan = _plan(*links)
    recorder = FaultInjector()
    _engine(tmp_path, recorder).apply(plan, {R: root_dir})
    before_first_mount = recorder.calls[: recorder.calls.index("fsopen")]
    assert before_first_mount.count("openat2") == 1, before_first_mount
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        assert os.readlink(os.path.join(root_dir, "dev", name)) == f"/proc/self/fd/{i}"
    _engine(tmp_path).destroy(plan, {R: root_dir})
    assert os.listdir(root_dir) == []


def test_every_failure_rolls_back_objects(tmp_path: Path, root_dir: str) -> None:
    """A fault injected at each call of a clean apply in turn leaves root, mounts, fds and state as before."""
    plan = _standard()
    clean = FaultInjector()
    Engine(backend=clean, state_dir=str(tmp_path / "clean")).apply(plan, {R: root_dir})
    Engine(state_dir=str(tmp_path / "clean")).destroy(plan, {R: root_dir})
    calls = len(clean.calls)
    assert {"symlinkat", "mkdirat", "create_file", "fchmod"} <= set(clean.calls)
    before = _plans.snapshot(root_dir)
    for index in range(1, calls + 1):
        state_dir = str(tmp_path / f"state{index}")
        injector = FaultInjector(fail_at=index)
        with pytest.raises(MountplanError) as info:
            Engine(backend=injector, state_dir=state_dir).apply(plan, {R: root_dir})
        where = f"fault {index}/{calls} ({injector.calls[index - 1]})"
        assert getattr(info.value, "leftovers", ()) == (), where
        assert _plans.snapshot(root_dir) == before, f"{where}:\n{_plans.diff(before, _plans.snapshot(root_dir))}"
        assert not [n for n in os.listdir(state_dir) if not n.endswith(".lock")], where


def test_a_later_mount_failing_undoes_earlier_objects(tmp_path: Path, root_dir: str) -> None:
    """The mount in the planned directory fails to attach: the directory, file and symlink made before it go."""
    before = _plans.snapshot(root_dir)
    injector = FaultInjector(fail_at=2, names=frozenset({"move_mount"}))  # dev first, then work/m
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path, injector).apply(_standard(), {R: root_dir})
    assert info.value.step == "work-m#07:move_mount" and "symlinkat" in injector.calls
    assert _plans.snapshot(root_dir) == before


def test_planted_symlink_at_a_planned_directory_is_refused(tmp_path: Path, root_dir: str) -> None:
    """``work -> outside``: apply refuses (EEXIST) before making anything; nothing appears outside the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), f"{root_dir}/work")
    before = _plans.snapshot(root_dir, str(outside))
    engine = _engine(tmp_path)
    changes = engine.plan(_standard(), {R: root_dir})
    assert any(p.startswith("work (r:work): EEXIST") for p in changes.problems), changes.problems
    with pytest.raises(ExecutionError) as info:
        engine.apply(_standard(), {R: root_dir})
    assert "refused before changing anything" in str(info.value) and "work (r:work): EEXIST" in str(info.value)
    assert _plans.snapshot(root_dir, str(outside)) == before
    assert os.readlink(f"{root_dir}/work") == str(outside)


def test_planted_symlink_in_the_parent_path_is_refused(tmp_path: Path, root_dir: str) -> None:
    """``a -> outside`` with a planned file at a/b/f and symlink at a/l: ELOOP; nothing is made outside."""
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    os.symlink(str(outside), f"{root_dir}/a")
    plan = _plan(_file("f", "a/b/f"), with_mounts=False)
    before = _plans.snapshot(root_dir, str(outside))
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(plan, {R: root_dir})
    assert "refused before changing anything" in str(info.value)
    assert "f (r:a/b/f)" in str(info.value) and ("ELOOP" in str(info.value) or "EXDEV" in str(info.value))
    assert _plans.snapshot(root_dir, str(outside)) == before
    link_plan = _plan(_sym("l", "a/l", "/etc/passwd"), with_mounts=False)
    with pytest.raises(ExecutionError):
        _engine(tmp_path).apply(link_plan, {R: root_dir})
    assert _plans.snapshot(root_dir, str(outside)) == before


def test_planted_symlink_where_a_symlink_goes_is_left_alone(tmp_path: Path, root_dir: str) -> None:
    """A symlink already at a planned symlink's path is not taken over, replaced or removed."""
    os.symlink("/etc", f"{root_dir}/l")
    with pytest.raises(ExecutionError):
        _engine(tmp_path).apply(_plan(_sym("l", "l", "/proc/self/fd"), with_mounts=False), {R: root_dir})
    assert os.readlink(f"{root_dir}/l") == "/etc"


class _RaceBefore:
    """The real backend; writes a file of someone else's at the target just before ``name`` runs."""

    def __init__(self, name: str) -> None:
        self._inner = KernelBackend()
        self._name = name

    def __getattr__(self, name: str) -> Any:
        func = getattr(self._inner, name)
        if name != self._name:
            return func

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            dirfd = args[1] if name == "symlinkat" else args[0]
            entry = args[2] if name == "symlinkat" else args[1]
            fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dirfd)
            os.write(fd, b"theirs\n")
            os.close(fd)
            return func(*args, **kwargs)

        return wrapper


@pytest.mark.parametrize("call", ["create_file", "symlinkat", "mkdirat"])
def test_a_file_raced_in_before_the_create_is_left_alone(tmp_path: Path, root_dir: str, call: str) -> None:
    """A file appears between the existence check and the create (EEXIST): rollback must not remove it."""
    plan = _plan(_file("f", "x"), with_mounts=False) if call == "create_file" else (
        _plan(_sym("l", "x", "/etc"), with_mounts=False) if call == "symlinkat" else _plan(_dir("d", "x"), with_mounts=False)
    )
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path, _RaceBefore(call)).apply(plan, {R: root_dir})
    assert isinstance(info.value.__cause__, KernelError) and info.value.__cause__.errno_name == "EEXIST"
    assert info.value.leftovers == ()
    assert Path(root_dir, "x").read_text() == "theirs\n"


def test_destroy_through_a_swapped_parent_removes_nothing_outside(tmp_path: Path, root_dir: str) -> None:
    """After apply the parent becomes a symlink to a twin tree outside: destroy refuses to cross it."""
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (outside / "b" / "f").write_text("precious\n")
    plan = _plan(_file("f", "a/b/f"), with_mounts=False)
    engine = _engine(tmp_path)
    engine.apply(plan, {R: root_dir})
    os.rename(f"{root_dir}/a", f"{root_dir}/a.moved")
    os.symlink(str(outside), f"{root_dir}/a")
    result = engine.destroy(plan, {R: root_dir})
    assert (outside / "b" / "f").read_text() == "precious\n"
    assert len(result.kept) == 1 and "r:a/b/f" in result.kept[0]
    assert os.path.exists(f"{root_dir}/a.moved/b/f")  # not removed through its new name either


def test_a_file_replaced_by_the_user_is_reported_not_removed(tmp_path: Path, root_dir: str) -> None:
    """The user replaced our file: plan reports it (EEXIST problem), destroy keeps it and says why."""
    plan = _plan(_file("stamp", "stamp"), with_mounts=False)
    engine = _engine(tmp_path)
    engine.apply(plan, {R: root_dir})
    os.unlink(f"{root_dir}/stamp")
    Path(root_dir, "stamp").write_text("theirs\n")
    changes = engine.plan(plan, {R: root_dir})
    assert [c.action for c in changes.changes] == [Action.CREATE]
    assert changes.problems and "is left alone" in changes.problems[0] and changes.has_drift
    result = engine.destroy(plan, {R: root_dir})
    assert result.removed == () and len(result.kept) == 1 and "no longer the file mountplan made" in result.kept[0]
    assert Path(root_dir, "stamp").read_text() == "theirs\n"


def test_a_removed_symlink_is_drift_and_made_again(tmp_path: Path, root_dir: str) -> None:
    """rm dev/fd by hand: diff shows + (drift, not a fresh plan), apply makes it again, then nothing to do."""
    engine = _engine(tmp_path)
    engine.apply(_standard(), {R: root_dir})
    os.unlink(f"{root_dir}/dev/fd")
    changes = engine.plan(_standard(), {R: root_dir})
    assert [(c.mount, c.action) for c in changes.changes if c.action is not Action.NOOP] == [("dev-fd", Action.CREATE)]
    assert changes.has_drift
    assert engine.apply(_standard(), {R: root_dir}).created == ("dev-fd",)
    assert os.readlink(f"{root_dir}/dev/fd") == "/proc/self/fd"
    assert not engine.plan(_standard(), {R: root_dir}).has_changes


def test_mode_drift_is_fixed_in_place(tmp_path: Path, root_dir: str) -> None:
    """chmod by hand: plan shows ~ mode, apply fixes it on the same inode, then nothing to do."""
    plan = _plan(_dir("work", "work", 0o700), with_mounts=False)
    engine = _engine(tmp_path)
    engine.apply(plan, {R: root_dir})
    ino = os.lstat(f"{root_dir}/work").st_ino
    os.chmod(f"{root_dir}/work", 0o755)
    (change,) = engine.plan(plan, {R: root_dir}).changes
    assert change.action is Action.UPDATE and [(f.field, f.live, f.planned) for f in change.fields] == [("mode", "0755", "0700")]
    assert engine.apply(plan, {R: root_dir}).updated == ("work",)
    assert _mode(f"{root_dir}/work") == 0o700 and os.lstat(f"{root_dir}/work").st_ino == ino
    assert not engine.plan(plan, {R: root_dir}).has_changes


def test_a_changed_link_target_is_replaced(tmp_path: Path, root_dir: str) -> None:
    """The plan's link text changed: -/+ (a symlink cannot change in place), then nothing to do."""
    engine = _engine(tmp_path)
    engine.apply(_plan(_sym("l", "l", "/old"), with_mounts=False), {R: root_dir})
    new = _plan(_sym("l", "l", "/new"), with_mounts=False)
    (change,) = engine.plan(new, {R: root_dir}).changes
    assert change.action is Action.REPLACE and change.fields[0].field == "link"
    assert engine.apply(new, {R: root_dir}).replaced == ("l",)
    assert os.readlink(f"{root_dir}/l") == "/new"
    assert not engine.plan(new, {R: root_dir}).has_changes
    engine.destroy(new, {R: root_dir})
    assert os.listdir(root_dir) == []


class _KillAfter:
    """The real backend; SIGKILLs this process right after the first call of ``name`` returns (or before it)."""

    def __init__(self, name: str, *, before: bool = False) -> None:
        self._inner = KernelBackend()
        self._name = name
        self._before = before

    def __getattr__(self, name: str) -> Any:
        func = getattr(self._inner, name)
        if name != self._name:
            return func

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = None if self._before else func(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return out

        return wrapper


@pytest.mark.parametrize("call", ["symlinkat", "mkdirat", "create_file", "fchmod"])
def test_recover_undoes_objects_of_a_killed_apply(tmp_path: Path, root_dir: str, call: str) -> None:
    """Killed right after an object's syscall (before its inode is journaled): recover removes it."""
    before = _plans.snapshot(root_dir)
    state_dir = str(tmp_path / "state")
    pid = os.fork()
    if pid == 0:  # the apply that gets killed
        try:
            Engine(backend=_KillAfter(call), state_dir=state_dir).apply(_standard(), {R: root_dir})
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert _plans.snapshot(root_dir) != before
    result = Engine(state_dir=state_dir).recover()
    assert result.leftovers == (), result.leftovers
    assert _plans.snapshot(root_dir) == before


def test_recover_leaves_a_symlink_it_did_not_make(tmp_path: Path, root_dir: str) -> None:
    """Killed after journaling a symlink but before making it; someone else's symlink is there now: kept."""
    state_dir = str(tmp_path / "state")
    plan = _plan(_sym("l", "l", "/proc/self/fd"), with_mounts=False)
    pid = os.fork()
    if pid == 0:
        try:
            Engine(backend=_KillAfter("symlinkat", before=True), state_dir=state_dir).apply(plan, {R: root_dir})
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    os.symlink("/etc", f"{root_dir}/l")
    result = Engine(state_dir=state_dir).recover()
    assert os.readlink(f"{root_dir}/l") == "/etc"
    assert len(result.leftovers) == 1 and "not the symlink" in result.leftovers[0]
