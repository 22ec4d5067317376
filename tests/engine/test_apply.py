"""apply/destroy on the real kernel: every mount kind, attribute and propagation mode."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from mountplan._kernel.constants import MountAttr
from mountplan._kernel.constants import Propagation as KProp
from mountplan.engine import Engine
from mountplan.errors import ExecutionError, KernelError, RootError
from mountplan.livetable import LiveMount, read_live_table
from mountplan.model import (
    Attr,
    BindSource,
    MountpointKind,
    MountpointSpec,
    MountSpec,
    Option,
    Plan,
    Propagation,
    RootSpec,
    SourceRef,
)
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns


def _plan(*mounts: MountSpec) -> Plan:
    return Plan(name="test", roots=(RootSpec("r"),), mounts=mounts)


def _engine(tmp_path: Path) -> Engine:
    return Engine(state_dir=str(tmp_path / "state"))


def _live(path: str) -> LiveMount:
    stack = read_live_table().at(path)
    assert stack, f"nothing mounted at {path}"
    return stack[-1]


def _tree(path: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), path))
    return sorted(out)


def test_tmpfs_with_options_is_mounted_and_destroyed(tmp_path: Path, root_dir: str) -> None:
    """A tmpfs gets its options, lands beneath the root, and destroy restores the table."""
    before = mount_table_snapshot()
    plan = _plan(MountSpec("tmp", "r", "tmp", fs_type="tmpfs", options=(Option("size", "4M"), Option("mode", "0700"))))
    result = _engine(tmp_path).apply(plan, {"r": root_dir})
    assert result.created == ("tmp",)
    live = _live(f"{root_dir}/tmp")
    assert live.fs_type == "tmpfs"
    assert "size=4096k" in live.super_options and "mode=700" in live.super_options
    assert os.stat(f"{root_dir}/tmp").st_mode & 0o7777 == 0o700
    _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert mount_table_snapshot() == before
    assert _tree(root_dir) == []


@pytest.mark.parametrize("fs_type", ["proc", "sysfs", "ramfs", "tmpfs"])
def test_every_filesystem_type_mounts(tmp_path: Path, root_dir: str, fs_type: str) -> None:
    """proc, sysfs, ramfs and tmpfs mount beneath the root and unmount cleanly."""
    before = mount_table_snapshot()
    plan = _plan(MountSpec("m", "r", "m", fs_type=fs_type))
    _engine(tmp_path).apply(plan, {"r": root_dir})
    assert _live(f"{root_dir}/m").fs_type == fs_type
    _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert mount_table_snapshot() == before


def test_overlay_with_layers_beneath_the_root(tmp_path: Path, root_dir: str) -> None:
    """An overlay's lower layer inside the root and upper/work on a planned tmpfs."""
    os.makedirs(f"{root_dir}/base")
    Path(f"{root_dir}/base/hello").write_text("lower")
    plan = _plan(
        MountSpec("scratch", "r", "scratch", fs_type="tmpfs"),
        MountSpec(
            "work", "r", "work", fs_type="overlay",
            options=(Option("lowerdir+", "base"), Option("upperdir", "scratch/up"), Option("workdir", "scratch/wk")),
        ),
    )
    _engine(tmp_path).apply(plan, {"r": root_dir})
    assert Path(f"{root_dir}/work/hello").read_text() == "lower"
    Path(f"{root_dir}/work/new").write_text("upper")
    assert Path(f"{root_dir}/scratch/up/new").read_text() == "upper"
    assert not Path(f"{root_dir}/base/new").exists()
    _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert _tree(root_dir) == ["base", "base/hello"]


@pytest.mark.parametrize("recursive", [True, False], ids=["rbind", "bind"])
def test_bind_recursive_or_not(tmp_path: Path, root_dir: str, recursive: bool) -> None:
    """A recursive bind carries submounts along; a plain bind shows only the top mount."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "top-file").write_text("x")
    subprocess.run(["mount", "-t", "tmpfs", "srcsub", str(src / "sub")], check=True)
    (src / "sub" / "inner").write_text("y")
    before = mount_table_snapshot()
    plan = _plan(MountSpec("b", "r", "b", bind=BindSource(SourceRef(str(src)), recursive=recursive)))
    _engine(tmp_path).apply(plan, {"r": root_dir})
    assert Path(f"{root_dir}/b/top-file").read_text() == "x"
    assert Path(f"{root_dir}/b/sub/inner").exists() is recursive
    _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert mount_table_snapshot() == before


def test_file_bind_creates_a_file_mountpoint(tmp_path: Path, root_dir: str) -> None:
    """Binding a single file creates an empty file to mount on, and destroy removes it."""
    plan = _plan(MountSpec("null", "r", "dev/null", bind=BindSource(SourceRef("/dev/null"), recursive=False)))
    _engine(tmp_path).apply(plan, {"r": root_dir})
    st = os.stat(f"{root_dir}/dev/null")
    assert st.st_rdev == os.stat("/dev/null").st_rdev
    _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert _tree(root_dir) == []


def test_explicit_file_mountpoint_kind(tmp_path: Path, root_dir: str) -> None:
    """mountpoint.kind=file makes a file even for a filesystem that is then refused (ENOTDIR)."""
    plan = _plan(
        MountSpec("t", "r", "f", fs_type="tmpfs", mountpoint=MountpointSpec(kind=MountpointKind.FILE))
    )
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(plan, {"r": root_dir})
    assert "move_mount" in str(info.value) and info.value.leftovers == ()
    assert _tree(root_dir) == []


def test_root_relative_bind_and_nested_mounts(tmp_path: Path, root_dir: str) -> None:
    """Nested targets are ordered parent first; a bind whose source is inside a planned mount follows it."""
    before = mount_table_snapshot()
    plan = _plan(
        MountSpec("copy", "r", "view", bind=BindSource(SourceRef("outer/mid/inner", "r"))),
        MountSpec("inner", "r", "outer/mid/inner", fs_type="tmpfs"),
        MountSpec("mid", "r", "outer/mid", fs_type="tmpfs"),
        MountSpec("outer", "r", "outer", fs_type="tmpfs"),
    )
    result = _engine(tmp_path).apply(plan, {"r": root_dir})
    assert result.created == ("outer", "mid", "inner", "copy")
    Path(f"{root_dir}/outer/mid/inner/x").write_text("seen")
    assert Path(f"{root_dir}/view/x").read_text() == "seen"
    again = _engine(tmp_path).apply(plan, {"r": root_dir})
    assert again.created == () and set(again.unchanged) == {"outer", "mid", "inner", "copy"}
    _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert mount_table_snapshot() == before
    assert _tree(root_dir) == []


ATTR_CASES = [
    (Attr.RO, MountAttr.RDONLY),
    (Attr.NOSUID, MountAttr.NOSUID),
    (Attr.NODEV, MountAttr.NODEV),
    (Attr.NOEXEC, MountAttr.NOEXEC),
    (Attr.NOATIME, MountAttr.NOATIME),
    (Attr.STRICTATIME, MountAttr.STRICTATIME),
    (Attr.NODIRATIME, MountAttr.NODIRATIME),
    (Attr.NOSYMFOLLOW, MountAttr.NOSYMFOLLOW),
]


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
@pytest.mark.parametrize(("attr", "flag"), ATTR_CASES, ids=[a.value for a, _ in ATTR_CASES])
def test_every_attribute_as_the_kernel_reports_it(
    tmp_path: Path, root_dir: str, attr: Attr, flag: MountAttr, kind: str
) -> None:
    """Each attribute, on a new filesystem and on a bind, shows up in the live table."""
    # The bind source is a mount of the sandbox's own: mounts inherited from a
    # more privileged namespace are locked and refuse atime changes (EPERM).
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "src", str(src)], check=True)
    bind = BindSource(SourceRef(str(src)), recursive=False) if kind == "bind" else None
    spec = MountSpec("m", "r", "m", fs_type=None if bind else "tmpfs", bind=bind, attrs=frozenset({attr}))
    _engine(tmp_path).apply(_plan(spec), {"r": root_dir})
    live = _live(f"{root_dir}/m")
    assert live.attrs & flag == flag
    if attr is Attr.STRICTATIME:
        assert not live.attrs & MountAttr.NOATIME


def test_relatime_clears_noatime_on_a_bind(tmp_path: Path, root_dir: str) -> None:
    """relatime is the atime mode 0, so asking for it must clear an inherited noatime."""
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noatime", "s", str(src)], check=True)
    spec = MountSpec("m", "r", "m", bind=BindSource(SourceRef(str(src))), attrs=frozenset({Attr.RELATIME}))
    _engine(tmp_path).apply(_plan(spec), {"r": root_dir})
    assert not _live(f"{root_dir}/m").attrs & (MountAttr.NOATIME | MountAttr.STRICTATIME)


@pytest.mark.parametrize("mode", list(Propagation), ids=[p.value for p in Propagation])
def test_every_propagation_mode(tmp_path: Path, root_dir: str, mode: Propagation) -> None:
    """private/shared/slave/unbindable as the kernel reports them afterwards."""
    spec = MountSpec("m", "r", "m", fs_type="tmpfs", propagation=mode)
    _engine(tmp_path).apply(_plan(spec), {"r": root_dir})
    live = _live(f"{root_dir}/m")
    # MS_SLAVE on a mount without a master makes it private (kernel.md).
    expected = KProp.PRIVATE if mode is Propagation.SLAVE else mode.kernel_value
    assert live.propagation == expected


def test_slave_of_a_shared_source(tmp_path: Path, root_dir: str) -> None:
    """A bind of a shared mount made slave receives mounts from its master."""
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "s", str(src)], check=True)
    subprocess.run(["mount", "--make-shared", str(src)], check=True)
    spec = MountSpec("m", "r", "m", bind=BindSource(SourceRef(str(src))), propagation=Propagation.SLAVE)
    _engine(tmp_path).apply(_plan(spec), {"r": root_dir})
    live = _live(f"{root_dir}/m")
    assert live.master is not None and live.propagation == KProp.SLAVE
    (src / "late").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "late", str(src / "late")], check=True)
    assert read_live_table().at(f"{root_dir}/m/late"), "slave did not receive the master's new mount"
    subprocess.run(["umount", str(src / "late")], check=True)


@pytest.mark.parametrize("link", ["/", "../..", "/etc"], ids=["abs-root", "climb", "abs-etc"])
def test_symlink_in_root_cannot_redirect_a_mount(tmp_path: Path, root_dir: str, link: str) -> None:
    """A planted symlink (proc -> /) is refused: nothing is mounted anywhere, nothing created."""
    os.symlink(link, f"{root_dir}/proc")
    before = mount_table_snapshot()
    plan = _plan(MountSpec("proc", "r", "proc/sub", fs_type="tmpfs"))
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(plan, {"r": root_dir})
    assert isinstance(info.value.__cause__, KernelError)
    assert info.value.__cause__.errno in {errno.ELOOP, errno.EXDEV}
    assert "proc" in str(info.value)
    assert mount_table_snapshot() == before
    assert _tree(root_dir) == ["proc"]


def test_symlink_as_the_final_component_is_refused(tmp_path: Path, root_dir: str) -> None:
    """A symlink at the target itself is not followed either."""
    os.symlink("/tmp", f"{root_dir}/tmp")
    before = mount_table_snapshot()
    with pytest.raises(ExecutionError):
        _engine(tmp_path).apply(_plan(MountSpec("t", "r", "tmp", fs_type="tmpfs")), {"r": root_dir})
    assert mount_table_snapshot() == before


def test_bad_option_error_carries_the_kernels_text(tmp_path: Path, root_dir: str) -> None:
    """The fs-context log is attached: `tmpfs: Bad value for 'size'`, and nothing is left."""
    before = mount_table_snapshot()
    plan = _plan(
        MountSpec("ok", "r", "ok", fs_type="tmpfs"),
        MountSpec("bad", "r", "bad", fs_type="tmpfs", options=(Option("size", "lots"),)),
    )
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(plan, {"r": root_dir})
    text = str(info.value)
    assert "tmpfs: Bad value for 'size'" in text
    assert "bad#02:fsconfig" in text and "EINVAL" in text
    assert info.value.step == "bad#02:fsconfig"
    assert mount_table_snapshot() == before
    assert _tree(root_dir) == []


def test_unknown_filesystem_type_is_enodev(tmp_path: Path, root_dir: str) -> None:
    """An unknown type fails at fsopen with ENODEV and a hint; the earlier mount is undone."""
    before = mount_table_snapshot()
    plan = _plan(MountSpec("a", "r", "a", fs_type="tmpfs"), MountSpec("b", "r", "b", fs_type="nosuchfs"))
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(plan, {"r": root_dir})
    assert "ENODEV" in str(info.value) and "b#00:fsopen" in str(info.value)
    assert mount_table_snapshot() == before


def test_missing_root_changes_nothing(tmp_path: Path) -> None:
    """A root that does not exist is a RootError before anything happens."""
    with pytest.raises(RootError, match="does not exist"):
        _engine(tmp_path).apply(_plan(MountSpec("t", "r", "t", fs_type="tmpfs")), {"r": str(tmp_path / "nope")})
    assert not (tmp_path / "state").exists() or not os.listdir(tmp_path / "state")


def test_root_given_as_an_open_fd_is_not_closed(tmp_path: Path, root_dir: str) -> None:
    """An embedder's dirfd works as a root and stays open afterwards."""
    fd = os.open(root_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        plan = _plan(MountSpec("t", "r", "t", fs_type="tmpfs"))
        _engine(tmp_path).apply(plan, {"r": fd})
        assert _live(f"{root_dir}/t").fs_type == "tmpfs"
        _engine(tmp_path).destroy(plan, {"r": fd})
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


def test_destroy_never_unmounts_a_foreign_mount(tmp_path: Path, root_dir: str) -> None:
    """If someone replaced our mount with theirs, destroy leaves theirs alone."""
    plan = _plan(MountSpec("t", "r", "t", fs_type="tmpfs"))
    _engine(tmp_path).apply(plan, {"r": root_dir})
    subprocess.run(["umount", f"{root_dir}/t"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "foreign", f"{root_dir}/t"], check=True)
    result = _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert result.removed == () and result.already_gone == ("t",)
    assert _live(f"{root_dir}/t").source == "foreign"


def test_existing_mountpoint_is_kept(tmp_path: Path, root_dir: str) -> None:
    """Destroy removes only what apply created: a pre-existing directory stays."""
    os.makedirs(f"{root_dir}/keep")
    plan = _plan(MountSpec("t", "r", "keep/t", fs_type="tmpfs"))
    _engine(tmp_path).apply(plan, {"r": root_dir})
    _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert _tree(root_dir) == ["keep"]
