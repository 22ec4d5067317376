"""statmount/listmount wrappers and LiveTable lookups against the real kernel."""

from __future__ import annotations

import errno
import os

import pytest
from _mounts import build_table, mount_tmpfs, scratch

from mountplan._kernel import (
    MoveMountFlag,
    OpenFlag,
    Resolve,
    fsconfig_create,
    fsmount,
    fsopen,
    move_mount,
    openat2,
)
from mountplan._kernel.statmount import (
    LSMT_ROOT,
    StatmountMask,
    iter_mounts,
    listmount,
    statmount,
)
from mountplan.errors import KernelError
from mountplan.livetable import TableSource, read_live_table

pytestmark = pytest.mark.mountns


def test_statmount_of_a_missing_id_raises_enoent_naming_the_call_and_id() -> None:
    """An id no mount has gives KernelError(ENOENT) whose message names statmount and the id."""
    missing = max(listmount()) + 1_000_000
    with pytest.raises(KernelError) as info:
        statmount(missing, StatmountMask.MNT_BASIC)
    err = info.value
    assert err.errno == errno.ENOENT
    assert err.op == "statmount"
    text = str(err)
    assert f"mnt_id={missing}" in text and "ENOENT" in text and "MNT_BASIC" in text
    assert "no mount with this unique id" in text


def test_listmount_pages_of_seven_give_the_same_ids_as_one_batch() -> None:
    """Paging 100+ mounts seven ids at a time yields exactly the single-batch list."""
    build_table(100)
    whole = listmount(batch=4096)
    assert len(whole) >= 100
    paged = list(iter_mounts(batch=7))
    assert paged == whole
    assert whole == sorted(whole)


def test_listmount_reverse_pages_give_the_ids_in_descending_order() -> None:
    """LISTMOUNT_REVERSE pages walk the namespace from the newest id down."""
    build_table(30)
    whole = listmount()
    assert list(iter_mounts(reverse=True, batch=7)) == whole[::-1]


def test_listmount_last_id_starts_after_that_id() -> None:
    """``last_id`` resumes strictly after the given id."""
    whole = listmount()
    assert listmount(last_id=whole[0]) == whole[1:]


def test_listmount_of_a_subtree_lists_only_mounts_beneath_it() -> None:
    """Listing under one mount's id gives the mounts below it, not the mount itself."""
    paths = build_table(20)
    table = read_live_table(TableSource.STATMOUNT)
    (base,) = table.at("/tmp/livetable")
    assert base.mnt_id is not None
    below = set(listmount(base.mnt_id))
    expected = {m.mnt_id for m in table.beneath("/tmp/livetable")} - {base.mnt_id}
    assert below == expected
    assert len(below) >= len(paths)


def test_listmount_rejects_a_non_positive_batch() -> None:
    """A batch of 0 is a programming error, reported before any syscall."""
    with pytest.raises(ValueError):
        listmount(batch=0)


def test_statmount_grows_its_buffer_for_a_long_mount_point() -> None:
    """A 6000-byte mount point overflows the first 4 KiB buffer (EOVERFLOW) and still comes back whole."""
    fd = scratch()
    parts = [f"{i:02d}" + "d" * 198 for i in range(30)]
    for part in parts:
        os.mkdir(part, dir_fd=fd)
        child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        os.close(fd)
        fd = child
    os.mkdir("leaf", dir_fd=fd)
    mount_tmpfs(fd, "leaf", {"source": "long"})
    os.close(fd)
    path = "/tmp/livetable/" + "/".join(parts) + "/leaf"
    assert len(path) > 6000
    (m,) = [m for m in read_live_table(TableSource.STATMOUNT) if m.source == "long"]
    assert m.mount_point == path
    (info,) = [i for i in read_live_table(TableSource.MOUNTINFO) if i.source == "long"]
    assert info.mount_point == path


def test_statmount_leaves_unreturned_fields_none() -> None:
    """Fields whose bit the kernel did not return stay None, even in the fixed part."""
    (first, *_) = listmount()
    result = statmount(first, StatmountMask.MNT_POINT)
    assert result.mask & StatmountMask.MNT_POINT
    assert result.mnt_point == "/"
    assert result.mnt_id is None and result.sb_flags is None and result.fs_type is None


def test_statmount_reports_an_empty_string_by_leaving_its_bit_out() -> None:
    """A mount without options: MNT_OPTS is missing from the returned mask; ``string`` gives ''."""
    base = scratch()
    os.mkdir("bare", dir_fd=base)
    mount_tmpfs(base, "bare", {"source": ""}, fs_type="ramfs")
    os.close(base)
    (m,) = read_live_table(TableSource.STATMOUNT).at("/tmp/livetable/bare")
    assert m.mnt_id is not None
    result = statmount(m.mnt_id, StatmountMask.MNT_OPTS | StatmountMask.SB_SOURCE)
    assert not result.mask & (StatmountMask.MNT_OPTS | StatmountMask.SB_SOURCE)
    assert result.mnt_opts is None and result.string("mnt_opts") == ""
    assert result.string("sb_source") == ""
    with pytest.raises(ValueError):
        result.string("fs_type")


def test_stacked_mounts_are_listed_bottom_to_top() -> None:
    """Three tmpfs mounted on one directory come back from ``at`` in mount order."""
    base = scratch()
    os.mkdir("stack", dir_fd=base)
    for label in ("bottom", "middle", "top"):
        mount_tmpfs(base, "stack", {"source": label})
    os.close(base)
    for source in (TableSource.STATMOUNT, TableSource.MOUNTINFO):
        table = read_live_table(source)
        assert [m.source for m in table.at("/tmp/livetable/stack")] == ["bottom", "middle", "top"]
        assert [m.source for m in table.at("/tmp/livetable/stack/")] == ["bottom", "middle", "top"]


def test_a_mount_slid_beneath_is_listed_at_the_bottom() -> None:
    """MOVE_MOUNT_BENEATH puts a newer mount under an older one; ``at`` follows the parent chain."""
    base = scratch()
    os.mkdir("slide", dir_fd=base)
    mount_tmpfs(base, "slide", {"source": "old"})
    with fsopen("tmpfs") as fs:
        from mountplan._kernel import fsconfig_set_string

        fsconfig_set_string(fs.fileno(), "source", "new")
        fsconfig_create(fs.fileno())
        with fsmount(fs.fileno()) as mnt, openat2(
            base, "slide", OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC, Resolve.BENEATH
        ) as target:
            move_mount(
                mnt.fileno(),
                "",
                target.fileno(),
                "",
                MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH | MoveMountFlag.BENEATH,
            )
    os.close(base)
    table = read_live_table(TableSource.STATMOUNT)
    assert [m.source for m in table.at("/tmp/livetable/slide")] == ["new", "old"]


def test_beneath_returns_the_subtree_in_table_order() -> None:
    """``beneath`` includes the path itself and everything below it, nothing beside it."""
    base = scratch()
    for name in ("a", "ab"):
        os.mkdir(name, dir_fd=base)
        mount_tmpfs(base, name)
    os.mkdir("a/b", dir_fd=base)
    mount_tmpfs(base, "a/b")
    os.close(base)
    table = read_live_table()
    assert [m.mount_point for m in table.beneath("/tmp/livetable/a")] == [
        "/tmp/livetable/a",
        "/tmp/livetable/a/b",
    ]
    assert len(table.beneath("/")) == len(table)
    with pytest.raises(ValueError):
        table.beneath("relative")


def test_auto_source_prefers_statmount_and_fills_unique_ids() -> None:
    """On a kernel with statmount, AUTO reads it and every record has a unique id."""
    table = read_live_table()
    assert table.source is TableSource.STATMOUNT
    assert all(m.mnt_id is not None and m.mnt_id > 2**31 for m in table)
    root = table.at("/")[-1]
    assert table.by_id(root.mnt_id or 0) == root
    assert table.by_old_id(root.mnt_id_old) == root
    assert table.by_id(LSMT_ROOT) is None


def test_mountinfo_table_has_no_unique_ids_but_finds_parents_by_old_id() -> None:
    """A mountinfo table leaves unique ids None; ``parent`` still resolves via 32-bit ids."""
    build_table(10)
    table = read_live_table(TableSource.MOUNTINFO)
    assert all(m.mnt_id is None and m.parent_id is None for m in table)
    (base,) = table.at("/tmp/livetable")
    child = table.beneath("/tmp/livetable")[1]
    assert table.parent(child) == base
