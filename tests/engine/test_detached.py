"""Detached trees (issue 15 item 3): a plan's mounts in no mount table, reached through an fd.

Every test builds real mounts in its sandbox and compares the namespace's mount
table (a copy of the host's) byte for byte. Each runs with the mechanism the
kernel offers and with the older kernels' one (a helper thread's private
namespace); under the emulated profiles (``kernelreach``) the automatic choice
is the fallback.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import select
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _plans import bind, tmpfs
from _profiles import needs_engine, needs_mount_setattr

import mountplan
from mountplan import _kernel
from mountplan._kernel import OpenTreeFlag
from mountplan._kernel.emulation import active_profile
from mountplan.engine.backend import KernelBackend
from mountplan.engine.context import Context
from mountplan.engine.detached import DetachedTree, Mechanism, build_detached
from mountplan.errors import ExecutionError, FeatureMissingError, KernelError
from mountplan.model import (
    Attr,
    MountSpec,
    ObjectKind,
    ObjectSpec,
    Option,
    Plan,
    Propagation,
    RootSpec,
    SourceRef,
)

pytestmark = [pytest.mark.mountns, pytest.mark.kernelreach, needs_engine]

DOC = Path(__file__).parents[2] / "docs" / "detached.md"
_PROFILE = active_profile()
_RELEASE = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
#: move_mount between detached mounts: Linux 6.15, and not under an emulated pre-6.8 profile.
needs_detached_moves = pytest.mark.skipif(
    _RELEASE < (6, 15) or (_PROFILE is not None and not _PROFILE.has_unique_mount_ids),
    reason="move_mount between detached mounts needs Linux 6.15",
)
#: The profile's seccomp filter takes mount_setattr away (a 6.15 kernel has it otherwise).
NO_MOUNT_SETATTR = _PROFILE is not None and _PROFILE.takes_away(("mount_setattr",))
#: Detached moves as the automatic choice picks them: with mount_setattr usable.
needs_detached_build = pytest.mark.skipif(NO_MOUNT_SETATTR, reason="the emulated profile takes mount_setattr away")
MECHANISMS = [
    pytest.param(None, id="auto"),
    pytest.param(Mechanism.DETACHED_MOVES, id="detached-moves", marks=[needs_detached_moves, needs_detached_build]),
    pytest.param(Mechanism.PRIVATE_NAMESPACE, id="private-namespace"),
]
HELLO = "#!/bin/sh\necho \"hello from $0\"\ncat /proc/self/mountinfo\n"


def overlay_plan() -> Plan:
    """plans/overlay.yaml's shape: a tmpfs for upper/work, an overlay of ``base`` at ``work``."""
    return Plan(name="detached", roots=(RootSpec("r"),), mounts=(
        tmpfs("scratch", "scratch", Option("size", "8m")),
        MountSpec(name="work", root="r", target="work", fs_type="overlay", source="overlay", after=("scratch",),
                  options=(Option("lowerdir+", "base"), Option("upperdir", "scratch/upper"),
                           Option("workdir", "scratch/work"))),
    ))


def with_hello(root: str) -> str:
    """Put an executable shell script at ``base/bin/hello`` beneath ``root``; return its text."""
    os.makedirs(f"{root}/base/bin")
    Path(root, "base/bin/hello").write_text(HELLO)
    os.chmod(f"{root}/base/bin/hello", 0o755)
    return HELLO


def build(plan: Plan, root: str, mechanism: Mechanism | None) -> DetachedTree:
    return build_detached(Context(KernelBackend()), plan, {"r": root}, mechanism=mechanism)


def table() -> bytes:
    with open("/proc/self/mountinfo", "rb") as f:
        return f.read()


def listing(root: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


class Inotify:
    """An inotify watch: IN_UNMOUNT arrives when the watched inode's filesystem goes away."""

    IN_UNMOUNT = 0x2000

    def __init__(self, path: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert libc.inotify_add_watch(self.fd, os.fsencode(path), 0x100 | 0x200) >= 0  # IN_CREATE|IN_DELETE
        self.masks: list[int] = []

    def unmounted(self, timeout: float) -> bool:
        if select.select([self.fd], [], [], timeout)[0]:
            data = os.read(self.fd, 4096)
            while data:
                _, mask, _, length = struct.unpack_from("iIII", data)
                self.masks.append(mask)
                data = data[16 + length:]
        return any(m & self.IN_UNMOUNT for m in self.masks)

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_program_runs_from_a_detached_overlay_and_no_mount_table_changes(root_dir: str, mechanism: Mechanism | None) -> None:
    """A script in the overlay's lower layer runs through /proc/self/fd/N; the table is identical before, during, after."""
    with_hello(root_dir)
    before, files = table(), listing(root_dir)
    with build(overlay_plan(), root_dir, mechanism) as tree:
        assert table() == before
        done = subprocess.run([tree.path() + "/work/bin/hello"], pass_fds=[tree.fileno()],
                              capture_output=True, check=True)
        first, _, seen = done.stdout.partition(b"\n")
        assert first == f"hello from /proc/self/fd/{tree.fileno()}/work/bin/hello".encode()
        assert seen == before  # the mount table the program saw while running inside the tree
        Path(tree.path(), "work/new").write_text("x")  # the overlay is writable: upper is the tree's tmpfs
        assert Path(tree.path(), "scratch/upper/new").read_text() == "x"
        assert not Path(root_dir, "work/new").exists()
    assert table() == before
    assert listing(root_dir) == files  # the mountpoints made in the root are gone again


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_closing_the_tree_ends_its_mounts(root_dir: str, mechanism: Mechanism | None) -> None:
    """The tree's tmpfs lives while the fd is open and its superblock is shut down when it closes."""
    with_hello(root_dir)
    tree = build(overlay_plan(), root_dir, mechanism)
    watch = Inotify(tree.path() + "/scratch/upper")
    try:
        assert not watch.unmounted(0.2)
        tree.close()
        assert watch.unmounted(10.0), f"no IN_UNMOUNT after close: {watch.masks}"
    finally:
        watch.close()
        tree.close()


@needs_mount_setattr
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_attributes_and_binds_beneath_a_root_apply_inside_the_tree(root_dir: str, mechanism: Mechanism | None) -> None:
    """A read-only noexec bind of a path inside a planned tmpfs, nested beneath it: as apply would make it."""
    with_hello(root_dir)
    plan = Plan(name="attrs", roots=(RootSpec("r"),), mounts=(
        tmpfs("data", "data", Option("mode", "0755")),
        bind("view", "view", SourceRef("base", "r"), recursive=True, attrs=frozenset({Attr.RO, Attr.NOEXEC})),
        tmpfs("inner", "data/inner", attrs=frozenset({Attr.RO})),
    ))
    before = table()
    with build(plan, root_dir, mechanism) as tree:
        assert os.path.isfile(tree.path() + "/view/bin/hello")
        with pytest.raises(PermissionError):
            subprocess.run([tree.path() + "/view/bin/hello"], pass_fds=[tree.fileno()], check=True)
        with pytest.raises(OSError) as ro:
            Path(tree.path(), "view/bin/other").write_text("x")
        assert ro.value.errno == errno.EROFS
        with pytest.raises(OSError) as inner:
            Path(tree.path(), "data/inner/x").write_text("x")
        assert inner.value.errno == errno.EROFS
        Path(tree.path(), "data/x").write_text("x")  # data itself is writable
        assert os.statvfs(tree.path() + "/data").f_fsid != os.statvfs(root_dir).f_fsid
        assert table() == before
    assert table() == before


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_read_only_single_bind_is_read_only_in_the_tree(root_dir: str, mechanism: Mechanism | None) -> None:
    """A non-recursive ro bind: its attributes are set wherever the kernel allows (before the move on 6.15+)."""
    with_hello(root_dir)
    plan = Plan(name="flat", roots=(RootSpec("r"),), mounts=(
        bind("flat", "flat", SourceRef("base", "r"), recursive=False, attrs=frozenset({Attr.RO})),
    ))
    with build(plan, root_dir, mechanism) as tree:
        assert os.path.isfile(tree.path() + "/flat/bin/hello")
        with pytest.raises(OSError) as ro:
            Path(tree.path(), "flat/new").write_text("x")
        assert ro.value.errno == errno.EROFS
    Path(root_dir, "base/new").write_text("x")  # the source itself stays writable


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_bad_option_midway_raises_and_leaves_nothing(root_dir: str, mechanism: Mechanism | None) -> None:
    """The second mount's bad size fails at its fsconfig step, naming errno and path; every fd and dir made is gone."""
    plan = Plan(name="midway", roots=(RootSpec("r"),), mounts=(
        tmpfs("good", "good"),
        tmpfs("bad", "good/bad", Option("size", "not-a-size")),
    ))
    before, fds = table(), open_fds()
    with pytest.raises(ExecutionError) as info:
        build(plan, root_dir, mechanism)
    message = str(info.value)
    assert info.value.step.startswith("bad#") and "fsconfig" in info.value.step
    assert "EINVAL" in message and "size" in message and "detached 'midway' failed" in message
    assert isinstance(info.value.cause, KernelError) and info.value.cause.errno == errno.EINVAL
    assert info.value.leftovers == ()
    assert table() == before
    assert os.listdir(root_dir) == []  # the mountpoint `good` made in the root was removed
    assert open_fds() == fds  # no fd of a detached mount is left holding it alive


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("target", ["escape/x", "link"], ids=["symlink-in-path", "symlink-at-target"])
def test_a_symlink_where_a_mountpoint_goes_is_refused(
    root_dir: str, tmp_path: Path, mechanism: Mechanism | None, target: str
) -> None:
    """``escape -> outside`` in the root: nothing is created or mounted outside, the error names the path."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), f"{root_dir}/escape")
    os.symlink(str(outside), f"{root_dir}/link")
    plan = Plan(name="hostile", roots=(RootSpec("r"),), mounts=(tmpfs("t", target),))
    before, fds = table(), open_fds()
    with pytest.raises(ExecutionError) as info:
        build(plan, root_dir, mechanism)
    assert isinstance(info.value.cause, KernelError)
    assert info.value.cause.errno in {errno.ELOOP, errno.EXDEV}
    assert f"r:{target.split('/')[0]}" in str(info.value)
    assert list(outside.iterdir()) == []
    assert sorted(os.listdir(root_dir)) == ["escape", "link"]
    assert table() == before
    assert open_fds() == fds


def test_the_fallback_refuses_an_unbindable_mount_before_making_anything(root_dir: str) -> None:
    """A recursive clone leaves unbindable mounts out: the private-namespace build refuses the plan up front."""
    plan = Plan(name="unbindable", roots=(RootSpec("r"),), mounts=(
        tmpfs("a", "a"), tmpfs("u", "a/u", propagation=Propagation.UNBINDABLE),
    ))
    with pytest.raises(FeatureMissingError, match="unbindable"):
        build(plan, root_dir, Mechanism.PRIVATE_NAMESPACE)
    assert os.listdir(root_dir) == []


@needs_detached_moves
def test_an_unbindable_mount_is_kept_in_a_detached_moves_tree(root_dir: str) -> None:
    """On 6.15+ the planned propagation is set before the move, so an unbindable mount stays in the tree."""
    plan = Plan(name="unbindable", roots=(RootSpec("r"),), mounts=(
        tmpfs("a", "a"), tmpfs("u", "a/u", propagation=Propagation.UNBINDABLE),
    ))
    with build(plan, root_dir, Mechanism.DETACHED_MOVES) as tree:
        assert os.statvfs(tree.path() + "/a/u").f_fsid != os.statvfs(tree.path() + "/a").f_fsid
        with pytest.raises(KernelError) as clone:  # unbindable: the kernel refuses to clone it
            _kernel.open_tree(tree.fileno(), "a/u", OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC)
        assert clone.value.errno == errno.EINVAL


@needs_detached_moves
@pytest.mark.skipif(not NO_MOUNT_SETATTR, reason="only an emulated profile takes mount_setattr from this kernel")
def test_detached_moves_without_mount_setattr_refuses_bind_attributes_before_making_anything(root_dir: str) -> None:
    """mount(2) cannot reach a detached mount: a bind with attributes is refused up front, naming mount_setattr."""
    plan = Plan(name="flat", roots=(RootSpec("r"),), mounts=(
        bind("flat", "flat", SourceRef("/usr"), recursive=False, attrs=frozenset({Attr.RO})),
    ))
    with pytest.raises(FeatureMissingError) as info:
        build(plan, root_dir, Mechanism.DETACHED_MOVES)
    assert info.value.syscall == "mount_setattr"
    assert os.listdir(root_dir) == []
    with build(plan, root_dir, None) as tree:  # the automatic choice takes the private namespace
        assert tree.mechanism is Mechanism.PRIVATE_NAMESPACE


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_root_on_a_shared_mount_propagates_nothing_to_its_peers(
    root_dir: str, tmp_path: Path, mechanism: Mechanism | None
) -> None:
    """The root is a shared mount with a peer: the tree's copy is made private first, so the peer gets nothing."""
    peer = tmp_path / "peer"
    peer.mkdir()
    subprocess.run(["mount", "--bind", root_dir, root_dir], check=True)
    subprocess.run(["mount", "--make-shared", root_dir], check=True)
    subprocess.run(["mount", "--bind", root_dir, str(peer)], check=True)
    before = table()
    with build(Plan(name="shared", roots=(RootSpec("r"),), mounts=(tmpfs("t", "t"),)), root_dir, mechanism) as tree:
        assert os.statvfs(tree.path() + "/t").f_fsid != os.statvfs(root_dir).f_fsid
        assert table() == before
        assert not os.path.ismount(peer / "t")
    assert table() == before


def test_the_documented_example_runs(root_dir: str) -> None:
    """docs/detached.md's Python block runs plans/overlay.yaml's overlay detached and gets the script's output."""
    with_hello(root_dir)
    before, files = table(), listing(root_dir)
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    os.chdir(DOC.parents[1])  # the example names plans/overlay.yaml relative to the repository
    namespace: dict[str, Any] = {"__name__": "detached_example"}
    exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the documented code itself
    out = namespace["run_in_detached_overlay"](root_dir)
    assert out.startswith("hello from /proc/self/fd/") and out.splitlines()[0].endswith("/work/bin/hello")
    assert table() == before
    assert listing(root_dir) == files


def test_public_api_builds_a_tree_from_a_plan_file(root_dir: str) -> None:
    """mountplan.detached() takes a plan path and a root path, like apply."""
    with_hello(root_dir)
    with mountplan.detached(DOC.parents[1] / "plans" / "overlay.yaml", roots={"tree": Path(root_dir)}) as tree:
        assert tree.roots == ("tree",)
        assert os.path.isfile(f"{tree.path('tree')}/work/bin/hello")
        assert tree.fd("tree") == tree.fileno()
    assert tree.closed


def test_every_root_gets_a_tree_and_fileno_needs_one_target_root(root_dir: str, tmp_path: Path) -> None:
    """A bind from root ``s`` into root ``r`` and a tmpfs in ``s``: two trees, fd(name) for each, fileno() refuses."""
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "data" / "f").write_text("from s")
    plan = Plan(name="two", roots=(RootSpec("r"), RootSpec("s")), mounts=(
        tmpfs("t", "t"),
        MountSpec(name="u", root="s", target="u", fs_type="tmpfs", source="u"),
        bind("b", "b", SourceRef("data", "s"), recursive=False),
    ))
    before = table()
    with build_detached(Context(KernelBackend()), plan, {"r": root_dir, "s": str(other)}) as tree:
        assert tree.roots == ("r", "s")
        assert Path(tree.path("r"), "b/f").read_text() == "from s"
        assert os.statvfs(tree.path("s") + "/u").f_fsid != os.statvfs(str(other)).f_fsid
        with pytest.raises(ValueError, match="fd"):
            tree.fileno()
        with pytest.raises(KeyError, match="no detached tree for root 'x'"):
            tree.fd("x")
        assert table() == before
    assert table() == before
    assert os.listdir(root_dir) == [] and sorted(os.listdir(other)) == ["data"]


def test_close_can_keep_the_mountpoints_it_made(root_dir: str) -> None:
    """close(keep_mountpoints=True) leaves the directories made in the root (for a tree something else still holds)."""
    tree = build(Plan(name="keep", roots=(RootSpec("r"),), mounts=(tmpfs("t", "a/t"),)), root_dir, None)
    tree.close(keep_mountpoints=True)
    assert tree.closed
    assert listing(root_dir) == ["a", "a/t"]


def _tmpfs_fd() -> Any:
    fs = _kernel.fsopen("tmpfs")
    try:
        _kernel.fsconfig_create(fs.fileno())
        return _kernel.fsmount(fs.fileno())
    finally:
        fs.close()


def test_kernel_fact_a_lazily_unmounted_anchor_loses_its_submounts(tmp_path: Path) -> None:
    """Why the fallback is a namespace: after umount2(MNT_DETACH) the anchor's fd no longer reaches what was beneath it."""
    anchor_dir = tmp_path / "anchor"
    anchor_dir.mkdir()
    anchor = _tmpfs_fd()
    _kernel.move_mount(anchor.fileno(), "", -100, str(anchor_dir), _kernel.MoveMountFlag.F_EMPTY_PATH)
    (anchor_dir / "sub").mkdir()
    sub = _tmpfs_fd()
    _kernel.move_mount(sub.fileno(), "", -100, str(anchor_dir / "sub"), _kernel.MoveMountFlag.F_EMPTY_PATH)
    (anchor_dir / "sub" / "marker").write_text("x")
    assert os.listdir(f"/proc/self/fd/{anchor.fileno()}/sub") == ["marker"]
    _kernel.detach_fd(anchor.fileno())
    assert os.listdir(f"/proc/self/fd/{anchor.fileno()}/sub") == []  # the bare directory: sub is disconnected
    sub.close()
    anchor.close()


@needs_detached_moves
@needs_detached_build
def test_kernel_fact_mount_setattr_refuses_a_mount_inside_a_detached_tree() -> None:
    """Why propagation is set before the move: the root of a detached tree takes mount_setattr, a mount inside it not."""
    top, inner = _tmpfs_fd(), _tmpfs_fd()
    _kernel.mkdirat(top.fileno(), "in", 0o755)
    _kernel.move_mount(inner.fileno(), "", top.fileno(), "in", _kernel.MoveMountFlag.F_EMPTY_PATH)
    private = _kernel.Propagation.PRIVATE
    _kernel.mount_setattr(top.fileno(), "", _kernel.AtFlag.EMPTY_PATH, propagation=private)
    with pytest.raises(KernelError) as refused:
        _kernel.mount_setattr(inner.fileno(), "", _kernel.AtFlag.EMPTY_PATH, propagation=private)
    assert refused.value.errno == errno.EINVAL
    inner.close()
    top.close()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_planned_objects_are_made_inside_the_tree_and_removed_from_the_root_on_close(
    root_dir: str, mechanism: Mechanism | None
) -> None:
    """A symlink in the tree's tmpfs, a file and a directory written into the root: built, then gone with close()."""
    plan = Plan(name="objects", roots=(RootSpec("r"),), mounts=(tmpfs("dev", "dev"),), objects=(
        ObjectSpec("dev-fd", "r", "dev/fd", ObjectKind.SYMLINK, link="/proc/self/fd"),
        ObjectSpec("etc", "r", "etc", ObjectKind.DIRECTORY, mode=0o755),
        ObjectSpec("hosts", "r", "etc/hosts", ObjectKind.FILE, mode=0o644),
    ))
    before, files = table(), listing(root_dir)
    with build(plan, root_dir, mechanism) as tree:
        assert os.readlink(tree.path() + "/dev/fd") == "/proc/self/fd"
        assert os.statvfs(tree.path() + "/dev").f_fsid != os.statvfs(root_dir).f_fsid
        assert os.stat(tree.path() + "/etc/hosts").st_mode & 0o7777 == 0o644
        assert not os.path.lexists(f"{root_dir}/dev/fd")  # the symlink lives in the tree's own tmpfs
        assert table() == before
    assert table() == before
    assert listing(root_dir) == files  # etc/hosts, etc and the mountpoint dev were written into the root: removed


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_close_keeps_an_object_that_was_replaced_in_the_root(root_dir: str, mechanism: Mechanism | None) -> None:
    """A planned file someone replaced in the root meanwhile is a different inode: close() leaves theirs alone."""
    plan = Plan(name="objects", roots=(RootSpec("r"),), mounts=(),
                objects=(ObjectSpec("f", "r", "f", ObjectKind.FILE, mode=0o644),))
    tree = build(plan, root_dir, mechanism)
    Path(root_dir, "f.new").write_text("theirs")
    os.rename(f"{root_dir}/f.new", f"{root_dir}/f")  # a new inode while ours still exists: not a reused number
    tree.close()
    assert Path(root_dir, "f").read_text() == "theirs"


@needs_mount_setattr  # its read-only recursive bind (tools) sets attributes beneath the bind
def test_build_action_plan_runs_detached(root_dir: str) -> None:
    """plans/build-action.yaml (devices expand into binds and symlink objects): its /dev is complete in the tree."""
    os.makedirs(f"{root_dir}/toolchain")
    Path(root_dir, "toolchain/tool").write_text("tool-v1\n")
    before, files = table(), listing(root_dir)
    with mountplan.detached(DOC.parents[1] / "plans" / "build-action.yaml", roots={"input": root_dir}) as tree:
        top = tree.path()
        assert Path(top, "opt/tools/tool").read_text() == "tool-v1\n"
        assert os.readlink(top + "/dev/fd") == "/proc/self/fd"
        assert os.path.samestat(os.stat(top + "/dev/null"), os.stat("/dev/null"))
        assert os.path.isdir(top + "/proc/self")
        assert table() == before
    assert table() == before
    assert listing(root_dir) == files


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_failing_object_names_its_own_step(root_dir: str, mechanism: Mechanism | None) -> None:
    """An object blocked by a file already in the root fails at its own step, not the previous mount's."""
    Path(root_dir, "taken").write_text("theirs")
    plan = Plan(name="blocked", roots=(RootSpec("r"),), mounts=(tmpfs("t", "t"),),
                objects=(ObjectSpec("o", "r", "taken", ObjectKind.SYMLINK, link="x"),))
    before = table()
    with pytest.raises(ExecutionError) as info:
        build(plan, root_dir, mechanism)
    assert info.value.step.startswith("o#"), info.value.step
    assert isinstance(info.value.cause, KernelError) and info.value.cause.errno == errno.EEXIST
    assert table() == before
    assert os.listdir(root_dir) == ["taken"] and Path(root_dir, "taken").read_text() == "theirs"
