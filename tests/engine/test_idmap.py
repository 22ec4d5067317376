"""Idmapped binds on the real kernel (issue 15, item 1): mapping, errors, drift, unprivileged, old kernels.

Ownership is checked against the kernel's rule (fs/mnt_idmapping.c): through a
mount idmapped with ``[inside, outside, count]`` a file stored with id ``inside + k``
shows as ``outside + k``, a process writing as ``outside + k`` stores
``inside + k``, and an id outside every range shows as the overflow id.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from _plans import ROOT, bind, tmpfs

from mountplan import _kernel
from mountplan._kernel import seccomp
from mountplan._kernel.emulation import PROFILES, active_profile
from mountplan._kernel.features import detect
from mountplan._kernel.statmount import statmount_idmap
from mountplan.changes import Action
from mountplan.engine import Engine, attrs
from mountplan.engine.backend import FaultInjector, KernelBackend
from mountplan.errors import ExecutionError, FeatureMissingError, KernelError
from mountplan.livetable import read_live_table
from mountplan.model import IdMapping, IdRange, MountSpec, Plan, RootSpec, SourceRef
from mountplan.testing import is_privileged, mount_table_snapshot

# No needs_engine: every test that applies is marked needs_mount_setattr, which every
# profile lacking a required syscall also lacks, and an idmap plan is refused for
# mount_setattr first, which the kernelreach test checks under those profiles too.
pytestmark = pytest.mark.mountns

_PROFILE = active_profile()
#: statmount reports live maps (6.15+); otherwise the diff compares with the state's record.
_LIVE_MAPS = _PROFILE is None or "statmount" not in _PROFILE.denied
needs_mount_setattr = pytest.mark.skipif(
    _PROFILE is not None and "mount_setattr" in _PROFILE.denied,
    reason="idmapped mounts need mount_setattr (Linux 5.12), which this emulated profile takes away",
)
_release = tuple(int(p) for p in os.uname().release.split(".")[:2])
#: tmpfs supports idmapped mounts from Linux 6.3 (FS_ALLOW_IDMAP in mm/shmem.c).
needs_tmpfs_idmap = pytest.mark.skipif(_release < (6, 3), reason="tmpfs supports idmapped mounts from Linux 6.3")
unprivileged_only = pytest.mark.skipif(
    is_privileged(), reason="the refusal under test happens only in a user namespace (the suite runs as root)"
)


def _idmap(*uids: tuple[int, int, int]) -> IdMapping:
    ranges = tuple(IdRange(*u) for u in uids)
    return IdMapping(ranges, ranges)


def _plan(*mounts: MountSpec, name: str = "idmap") -> Plan:
    return Plan(name=name, roots=(RootSpec(ROOT),), mounts=mounts)


def _view_plan(idmap: IdMapping, name: str = "idmap") -> Plan:
    """A tmpfs made in the sandbox (owned by its user namespace) and an idmapped bind of it."""
    view = bind("view", "view", SourceRef("data", ROOT), recursive=False)
    view = dataclasses.replace(view, bind=dataclasses.replace(view.bind, idmap=idmap))  # type: ignore[arg-type]
    return _plan(tmpfs("data", "data"), view, name=name)


def _engine(tmp_path: Path) -> Engine:
    return Engine(state_dir=str(tmp_path / "state"))


def _overflow_uid() -> int:
    with open("/proc/sys/kernel/overflowuid") as f:
        return int(f.read())


def _write_as(uid: int, directory: str, name: str) -> int:
    """Create ``directory/name`` in a child whose uids and gids are all ``uid``; its exit status.

    The child enters the directory before dropping root: pytest's temporary
    directories above it are private to root.
    """
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(directory)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            Path(name).write_text(name)
        except BaseException:  # noqa: BLE001 - any failure is the child's answer
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def shared_dir(tmp_path: Path) -> str:
    """A host directory with a file owned by uid/gid 1000, writable by anyone (made before the sandbox)."""
    path = tmp_path / "shared"
    path.mkdir()
    os.chmod(path, 0o777)
    if is_privileged():
        (path / "owned1000").write_text("x")
        os.chown(path / "owned1000", 1000, 1000)
    return str(path)


@pytest.mark.rootonly
@needs_mount_setattr
def test_mapped_writer_lands_with_mapped_owner_on_source(root_dir: str, shared_dir: str, tmp_path: Path) -> None:
    """Through uids/gids [0, 100000, 65536]: 1000 shows as 101000, and 101000 writes files stored as 1000."""
    spec = bind("cache", "cache", SourceRef(shared_dir))
    spec = dataclasses.replace(spec, bind=dataclasses.replace(spec.bind, idmap=_idmap((0, 100000, 65536))))  # type: ignore[arg-type]
    _engine(tmp_path).apply(_plan(spec), {ROOT: root_dir})
    seen = os.stat(f"{root_dir}/cache/owned1000")
    assert (seen.st_uid, seen.st_gid) == (101000, 101000)
    assert _write_as(101000, f"{root_dir}/cache", "written") == 0
    stored = os.stat(f"{shared_dir}/written")
    assert (stored.st_uid, stored.st_gid) == (1000, 1000)
    # An id the mapping does not cover cannot write through the mount at all.
    assert _write_as(100000 + 65536, f"{root_dir}/cache", "unmapped") != 0
    assert not os.path.exists(f"{shared_dir}/unmapped")


@needs_mount_setattr
@needs_tmpfs_idmap
def test_ids_outside_the_mapping_show_as_the_overflow_id(root_dir: str, tmp_path: Path) -> None:
    """[1, 0, 1]: a root-owned file shows as root on the tmpfs and as the overflow id through the view."""
    _engine(tmp_path).apply(_view_plan(_idmap((1, 0, 1))), {ROOT: root_dir})
    Path(f"{root_dir}/data/file").write_text("x")
    assert os.stat(f"{root_dir}/data/file").st_uid == 0
    assert os.stat(f"{root_dir}/view/file").st_uid == _overflow_uid()
    view = read_live_table().at(f"{root_dir}/view")[-1]
    assert view.attrs & _kernel.MountAttr.IDMAP
    if _LIVE_MAPS:
        assert statmount_idmap(view.mnt_id) == (("1 0 1",), ("1 0 1",))  # type: ignore[arg-type]


@needs_mount_setattr
def test_filesystem_without_idmap_support_is_named_and_nothing_is_mounted(root_dir: str, tmp_path: Path) -> None:
    """ramfs lacks FS_ALLOW_IDMAP: the error names it, says so, and apply leaves nothing behind."""
    view = bind("view", "view", SourceRef("scratch", ROOT), recursive=False)
    view = dataclasses.replace(view, bind=dataclasses.replace(view.bind, idmap=_idmap((1, 0, 1))))  # type: ignore[arg-type]
    plan = _plan(MountSpec(name="scratch", root=ROOT, target="scratch", fs_type="ramfs", source="ramfs"), view)
    before = mount_table_snapshot()
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(plan, {ROOT: root_dir})
    assert "the ramfs filesystem of bind source r:scratch" in str(info.value)
    assert "does not support idmapped mounts" in str(info.value)
    assert isinstance(info.value.cause, KernelError) and info.value.cause.errno == errno.EINVAL
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


@needs_mount_setattr
@needs_tmpfs_idmap
def test_recursive_bind_names_the_submount_that_cannot_be_idmapped(root_dir: str, tmp_path: Path) -> None:
    """A recursive bind of a tmpfs with a ramfs beneath: the tmpfs is fine, the ramfs submount is named."""
    view = bind("view", "view", SourceRef("top", ROOT), recursive=True)
    view = dataclasses.replace(view, bind=dataclasses.replace(view.bind, idmap=_idmap((1, 0, 1))))  # type: ignore[arg-type]
    inner = MountSpec(name="inner", root=ROOT, target="top/inner", fs_type="ramfs", source="ramfs")
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(_plan(tmpfs("top", "top"), inner, view), {ROOT: root_dir})
    assert f"ramfs on {root_dir}/top/inner" in str(info.value)
    assert "recursive: false" in str(info.value)


@needs_mount_setattr
@needs_tmpfs_idmap
def test_second_apply_changes_nothing(root_dir: str, tmp_path: Path) -> None:
    """Applying an idmapped plan again finds the mapping in place: no change, nothing replaced."""
    engine, plan = _engine(tmp_path), _view_plan(_idmap((1, 0, 1)))
    engine.apply(plan, {ROOT: root_dir})
    again = engine.apply(plan, {ROOT: root_dir})
    assert (again.created, again.replaced, again.updated) == ((), (), ())
    assert not engine.plan(plan, {ROOT: root_dir}).has_changes


@needs_mount_setattr
@needs_tmpfs_idmap
def test_changed_mapping_is_a_replacement_and_apply_makes_it(root_dir: str, tmp_path: Path) -> None:
    """A new mapping is shown as -/+ with the field and the reason; apply replaces the mount with it."""
    engine = _engine(tmp_path)
    engine.apply(_view_plan(_idmap((1, 0, 1))), {ROOT: root_dir})
    changed = _view_plan(_idmap((2, 0, 1)))
    change = {c.mount: c for c in engine.plan(changed, {ROOT: root_dir}).changes}["view"]
    assert change.action is Action.REPLACE
    assert "idmap forces replacement" in change.reason
    assert [(f.field, f.planned, f.live) for f in change.fields] == [
        ("idmap.uids", "2:0:1", "1:0:1"), ("idmap.gids", "2:0:1", "1:0:1"),
    ]
    assert engine.apply(changed, {ROOT: root_dir}).replaced == ("view",)
    view = read_live_table().at(f"{root_dir}/view")[-1]
    if _LIVE_MAPS:
        assert statmount_idmap(view.mnt_id) == (("2 0 1",), ("2 0 1",))  # type: ignore[arg-type]
    assert not engine.plan(changed, {ROOT: root_dir}).has_changes


@needs_mount_setattr
@needs_tmpfs_idmap
def test_idmap_dropped_from_the_plan_is_a_replacement(root_dir: str, tmp_path: Path) -> None:
    """A bind the plan no longer idmaps is replaced by a plain one (a mapping cannot be cleared in place)."""
    engine = _engine(tmp_path)
    engine.apply(_view_plan(_idmap((1, 0, 1))), {ROOT: root_dir})
    plain = _plan(tmpfs("data", "data"), bind("view", "view", SourceRef("data", ROOT), recursive=False))
    change = {c.mount: c for c in engine.plan(plain, {ROOT: root_dir}).changes}["view"]
    assert change.action is Action.REPLACE and change.fields[0].field == "idmap"
    engine.apply(plain, {ROOT: root_dir})
    assert not read_live_table().at(f"{root_dir}/view")[-1].attrs & _kernel.MountAttr.IDMAP


@needs_mount_setattr
@needs_tmpfs_idmap
def test_existing_user_namespace_by_fd(root_dir: str, tmp_path: Path) -> None:
    """``userns: fd:N`` takes that namespace's mapping; the same reference again changes nothing."""
    userns = _kernel.make_userns("1 0 1\n", "1 0 1\n")
    plan = _view_plan(IdMapping(userns=f"fd:{userns.fileno()}"))
    engine = _engine(tmp_path)
    engine.apply(plan, {ROOT: root_dir})
    assert os.path.exists(f"{root_dir}/view")
    Path(f"{root_dir}/data/file").write_text("x")
    assert os.stat(f"{root_dir}/view/file").st_uid == _overflow_uid()
    assert not engine.plan(plan, {ROOT: root_dir}).has_changes
    other = _kernel.make_userns("2 0 1\n", "2 0 1\n")
    os.dup2(other.fileno(), userns.fileno())  # the same reference now names another namespace
    change = {c.mount: c for c in engine.plan(plan, {ROOT: root_dir}).changes}["view"]
    assert change.action is Action.REPLACE and change.fields[0].field == "idmap.userns"


@unprivileged_only
@needs_mount_setattr
def test_unprivileged_bind_of_a_host_filesystem_is_refused_with_the_reason(
    root_dir: str, shared_dir: str, tmp_path: Path
) -> None:
    """In a user namespace the host's filesystem cannot be idmapped: EPERM, explained, nothing left."""
    spec = bind("cache", "cache", SourceRef(shared_dir), recursive=False)
    spec = dataclasses.replace(spec, bind=dataclasses.replace(spec.bind, idmap=_idmap((0, 0, 1))))  # type: ignore[arg-type]
    before = mount_table_snapshot()
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(_plan(spec), {ROOT: root_dir})
    assert isinstance(info.value.cause, KernelError) and info.value.cause.errno == errno.EPERM
    assert "this process runs in a user namespace" in str(info.value)
    assert mount_table_snapshot() == before


@unprivileged_only
def test_unmapped_outside_ids_are_refused_by_name() -> None:
    """Outside ids this user namespace lacks: the uid_map write fails and the error names the ids."""
    with open("/proc/self/uid_map") as f:
        ours = [(int(a), int(c)) for a, _, c in (line.split() for line in f)]
    top = max(first + count for first, count in ours)
    with pytest.raises(KernelError) as info:
        _kernel.make_userns(f"0 {top} 1\n", f"0 {top} 1\n")
    assert info.value.errno == errno.EPERM
    assert f"outside ids {top}-{top}" in str(info.value)


@pytest.mark.parametrize("profile", ["5.6", "5.2"])
def test_old_kernel_refuses_before_touching_anything(profile: str, root_dir: str, tmp_path: Path) -> None:
    """Without mount_setattr (5.6 and 5.2 emulated by seccomp) apply names mount_setattr and 5.12 and changes nothing."""
    seccomp.install(PROFILES[profile])
    detect.cache_clear()
    attrs.has_mount_setattr.cache_clear()
    before = mount_table_snapshot()
    with pytest.raises(FeatureMissingError) as info:
        _engine(tmp_path).apply(_view_plan(_idmap((1, 0, 1))), {ROOT: root_dir})
    assert info.value.syscall == "mount_setattr"
    assert "mount_setattr needs Linux 5.12" in str(info.value)
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


@pytest.mark.kernelreach
@needs_tmpfs_idmap
def test_apply_under_the_emulated_kernel(root_dir: str, tmp_path: Path) -> None:
    """Under each CI profile: refused up front where mount_setattr is gone, applied and stable elsewhere."""
    engine, plan = _engine(tmp_path), _view_plan(_idmap((1, 0, 1)))
    if _PROFILE is not None and "mount_setattr" in _PROFILE.denied:
        with pytest.raises(FeatureMissingError) as info:
            engine.apply(plan, {ROOT: root_dir})
        assert info.value.syscall == "mount_setattr"
        assert os.listdir(root_dir) == []
        return
    engine.apply(plan, {ROOT: root_dir})
    assert read_live_table().at(f"{root_dir}/view")[-1].attrs & _kernel.MountAttr.IDMAP
    assert not engine.plan(plan, {ROOT: root_dir}).has_changes
    change = {c.mount: c for c in engine.plan(_view_plan(_idmap((2, 0, 1))), {ROOT: root_dir}).changes}["view"]
    assert change.action is Action.REPLACE and change.fields[0].field == "idmap.uids"


@needs_mount_setattr
@needs_tmpfs_idmap
def test_binds_with_one_mapping_share_one_user_namespace(root_dir: str, tmp_path: Path) -> None:
    """Making a user namespace costs a process: an apply makes one per distinct mapping, not per bind."""
    same, other = _idmap((1, 0, 1)), _idmap((2, 0, 1))
    mounts = [tmpfs("data", "data")]
    for name, idmap in (("a", same), ("b", same), ("c", other), ("d", same)):
        spec = bind(name, name, SourceRef("data", ROOT), recursive=False)
        mounts.append(dataclasses.replace(spec, bind=dataclasses.replace(spec.bind, idmap=idmap)))  # type: ignore[arg-type]
    backend = FaultInjector()
    Engine(state_dir=str(tmp_path / "state"), backend=backend).apply(_plan(*mounts), {ROOT: root_dir})
    assert backend.calls.count("make_userns") == 2
    Path(f"{root_dir}/data/file").write_text("x")
    assert {os.stat(f"{root_dir}/{name}/file").st_uid for name in "abcd"} == {_overflow_uid()}
    if _LIVE_MAPS:
        table = read_live_table()
        maps = {name: statmount_idmap(table.at(f"{root_dir}/{name}")[-1].mnt_id)[0] for name in "abcd"}  # type: ignore[arg-type,index]
        assert maps == {"a": ("1 0 1",), "b": ("1 0 1",), "c": ("2 0 1",), "d": ("1 0 1",)}


@needs_mount_setattr
def test_plan_asks_the_kernel_and_names_the_filesystem_without_changing_anything(root_dir: str, tmp_path: Path) -> None:
    """`plan` idmaps a detached clone of /proc and drops it: the refusal names proc; nothing is mounted."""
    spec = bind("procview", "procview", SourceRef("/proc"), recursive=False)
    spec = dataclasses.replace(spec, bind=dataclasses.replace(spec.bind, idmap=_idmap((0, 0, 1))))  # type: ignore[arg-type]
    before = mount_table_snapshot()
    changes = _engine(tmp_path).plan(_plan(spec), {ROOT: root_dir})
    assert len(changes.problems) == 1
    assert "the proc filesystem of bind source /proc" in changes.problems[0]
    assert "does not support idmapped mounts" in changes.problems[0]
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


class _CloneRecorder(KernelBackend):
    """Records each open_tree call: what the dirfd is (device, inode), the path and the flags."""

    def __init__(self) -> None:
        super().__init__()
        self.clones: list[tuple[tuple[int, int] | None, str, int]] = []

    def open_tree(self, dirfd: int, path: str, flags: Any, *args: Any, **kwargs: Any) -> Any:
        st = os.fstat(dirfd) if dirfd >= 0 else None
        self.clones.append(((st.st_dev, st.st_ino) if st is not None else None, path, int(flags)))
        return super().open_tree(dirfd, path, flags, *args, **kwargs)


@needs_mount_setattr
@pytest.mark.parametrize("source", ["in-root", "host"])
def test_plan_probe_clones_the_source_exactly_as_apply_does(root_dir: str, tmp_path: Path, source: str) -> None:
    """The idmap probe's open_tree (same pinned directory, path and flags) is the one apply makes: its answer is apply's."""
    os.mkdir(f"{root_dir}/src")
    host = tmp_path / "host"
    host.mkdir()
    ref = SourceRef("src", ROOT) if source == "in-root" else SourceRef(str(host))
    spec = bind("view", "view", ref, recursive=True)
    spec = dataclasses.replace(spec, bind=dataclasses.replace(spec.bind, idmap=_idmap((1, 0, 1))))  # type: ignore[arg-type]
    backend = _CloneRecorder()
    engine = Engine(state_dir=str(tmp_path / "state"), backend=backend)
    engine.plan(_plan(spec), {ROOT: root_dir})
    probed = list(backend.clones)
    backend.clones.clear()
    try:
        engine.apply(_plan(spec), {ROOT: root_dir})
    except ExecutionError:
        pass  # the filesystem may refuse the mapping here (unprivileged): the clone was made first all the same
    assert len(probed) == 1
    assert backend.clones[:1] == probed
