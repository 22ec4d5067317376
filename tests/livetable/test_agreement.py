"""Both live-table sources agree with each other and with util-linux findmnt, field by field."""

from __future__ import annotations

import dataclasses

import pytest
from _mounts import build_table, findmnt_rows

from mountplan._kernel.constants import MountAttr, Propagation
from mountplan.livetable import LiveMount, TableSource, read_live_table, read_mountinfo, read_statmount

pytestmark = pytest.mark.mountns

SYNTHETIC = 3000


def _vfs_options(m: LiveMount) -> str:
    """Render attrs the way the kernel's show_mnt_opts orders them (what findmnt prints)."""
    parts = ["ro" if m.attrs & MountAttr.RDONLY else "rw"]
    for flag, name in (
        (MountAttr.NOSUID, "nosuid"),
        (MountAttr.NODEV, "nodev"),
        (MountAttr.NOEXEC, "noexec"),
        (MountAttr.NOATIME, "noatime"),
        (MountAttr.NODIRATIME, "nodiratime"),
    ):
        if m.attrs & flag:
            parts.append(name)
    if not m.attrs & (MountAttr.NOATIME | MountAttr.STRICTATIME):
        parts.append("relatime")
    if m.attrs & MountAttr.NOSYMFOLLOW:
        parts.append("nosymfollow")
    if m.attrs & MountAttr.IDMAP:
        parts.append("idmapped")
    return ",".join(parts)


def _propagation(m: LiveMount) -> str:
    text = "shared" if m.propagation is Propagation.SHARED else "private"
    if m.master is not None:
        text += ",slave"
    if m.propagation is Propagation.UNBINDABLE:
        text += ",unbindable"
    return text


def _findmnt_source(row: dict[str, object], m: LiveMount) -> str:
    # findmnt prints a bind of a subdirectory as "dev[/path]" (the mount's root in
    # brackets); strip that to compare with the kernel's plain source. It prints an
    # empty source as null.
    source = row["source"]
    if source is None:
        return ""
    assert isinstance(source, str)
    suffix = f"[{m.root}]"
    if m.root != "/" and source.endswith(suffix):
        source = source[: -len(suffix)]
    return source


def assert_matches_findmnt(mounts: list[LiveMount]) -> int:
    rows = {row["id"]: row for row in findmnt_rows()}
    assert len(rows) == len(mounts), "findmnt and the reader see a different number of mounts"
    for m in mounts:
        row = rows[m.mnt_id_old]
        fs_options = str(row["fs-options"]).split(",")
        got = {
            "parent": m.parent_id_old,
            "target": m.mount_point,
            "source": m.source,
            "fstype": m.fs_type,
            "vfs-options": _vfs_options(m),
            "fs-options": ["ro" if m.super_readonly else "rw", *m.super_options],
            "propagation": _propagation(m),
        }
        want = {
            "parent": row["parent"],
            "target": row["target"],
            "source": _findmnt_source(row, m),
            "fstype": row["fstype"],
            "vfs-options": row["vfs-options"],
            "fs-options": fs_options,
            "propagation": row["propagation"],
        }
        assert got == want, f"mount {m.mnt_id_old} differs from findmnt"
    return len(mounts)


def assert_sources_agree() -> list[LiveMount]:
    info = read_mountinfo()
    stat = read_statmount()
    assert [m.mnt_id_old for m in info] == [m.mnt_id_old for m in stat], "different order or membership"
    for a, b in zip(info, stat):
        assert b.mnt_id is not None and b.parent_id is not None
        assert a == dataclasses.replace(b, mnt_id=None, parent_id=None)
    return stat


def test_mountinfo_matches_findmnt_on_the_real_table() -> None:
    """Before anything is mounted, the mountinfo reader agrees with findmnt on every mount."""
    assert_matches_findmnt(read_mountinfo())


def test_statmount_matches_findmnt_on_the_real_table() -> None:
    """Before anything is mounted, the statmount reader agrees with findmnt on every mount."""
    assert_matches_findmnt(read_statmount())


def test_mountinfo_and_statmount_agree_on_the_real_table() -> None:
    """Both readers give the same records, in the same order, apart from the unique ids."""
    assert_sources_agree()


def test_both_sources_match_findmnt_on_thousands_of_synthetic_mounts() -> None:
    """3000 tmpfs mounts with escaped names, empty sources, every attr and propagation
    mode, stacks and binds: mountinfo, statmount and findmnt all agree."""
    paths = build_table(SYNTHETIC)
    stat = assert_sources_agree()
    assert len(stat) >= SYNTHETIC + len(paths) // 50
    assert_matches_findmnt(stat)
    assert_matches_findmnt(read_mountinfo())
    # The synthetic table really contains what it claims to cover.
    props = {m.propagation for m in stat}
    assert props >= {Propagation.SHARED, Propagation.SLAVE, Propagation.PRIVATE, Propagation.UNBINDABLE}
    assert any(m.propagation is Propagation.SHARED and m.master is not None for m in stat)
    assert any(m.source == "" for m in stat)
    assert any("\n" in m.mount_point and "\\" in m.mount_point for m in stat)


def test_unique_parent_ids_point_at_the_mount_with_the_old_parent_id() -> None:
    """statmount's 64-bit parent id names the same mount as the 32-bit parent id."""
    build_table(200)
    table = read_live_table(TableSource.STATMOUNT)
    checked = 0
    for m in table:
        assert m.parent_id is not None
        parent = table.by_id(m.parent_id)
        if parent is None:  # the namespace root's parent is outside our view
            assert m.mount_point == "/"
            continue
        assert parent.mnt_id_old == m.parent_id_old
        checked += 1
    assert checked >= 200
