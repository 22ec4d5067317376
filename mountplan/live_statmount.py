"""The live table from listmount(2) + statmount(2): the whole namespace, or only the mounts beneath some paths."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator, Sequence

from mountplan._kernel.constants import AT_FDCWD, AtFlag, MountAttr
from mountplan._kernel.statmount import StatmountBuffer, StatmountMask, iter_mounts, listmount
from mountplan._kernel.syscalls import statx_mount_ids
from mountplan.errors import KernelError
from mountplan.live_mount import _KNOWN_ATTRS, LiveMount, _is_beneath_any, _normalize_paths, _propagation
from mountplan.mountinfo import unescape_mountinfo

__all__ = ["read_statmount", "statmount_live"]


_TABLE_MASK = (
    StatmountMask.SB_BASIC
    | StatmountMask.MNT_BASIC
    | StatmountMask.PROPAGATE_FROM
    | StatmountMask.MNT_ROOT
    | StatmountMask.MNT_POINT
    | StatmountMask.FS_TYPE
    | StatmountMask.FS_SUBTYPE
    | StatmountMask.MNT_OPTS
    | StatmountMask.SB_SOURCE
)
_SB_RDONLY = 0x1
# Generic superblock flags that mountinfo lists among the super options but
# statmount's mnt_opts omits (fs/proc_namespace.c show_sb_opts, in that order).
_SB_FLAG_OPTIONS = ((0x10, "sync"), (0x80, "dirsync"), (0x40, "mand"), (1 << 25, "lazytime"))
_MS_UNBINDABLE = 1 << 17
_MS_SLAVE = 1 << 19
_MS_SHARED = 1 << 20


# struct statmount offsets (kernel.md): the fields a LiveMount is made of.
_OFF_MNT_OPTS, _OFF_FS_TYPE, _OFF_MNT_ROOT, _OFF_MNT_POINT = 4, 36, 104, 108
_OFF_FS_SUBTYPE, _OFF_SB_SOURCE = 120, 124
_SB_BASIC_AT = (16, struct.Struct("<II8xI"))  # dev major, minor, (sb_magic skipped), sb_flags
_MNT_BASIC_AT = (40, struct.Struct("<QQIIQQQQ"))  # id, parent, id_old, parent_old, attr, propagation, peer, master
_PROPAGATE_FROM_AT = 96
_BIT_SB_BASIC, _BIT_MNT_BASIC, _BIT_PROPAGATE_FROM = 0x1, 0x2, 0x4
_BIT_MNT_ROOT, _BIT_MNT_POINT, _BIT_FS_TYPE, _BIT_MNT_OPTS = 0x8, 0x10, 0x20, 0x80
_BIT_FS_SUBTYPE, _BIT_SB_SOURCE = 0x100, 0x200
# Constructing an IntFlag costs more than the rest of a record; a table has few distinct values.
_ATTR_CACHE: dict[int, MountAttr] = {}


def _mount_attr(value: int) -> MountAttr:
    attrs = _ATTR_CACHE.get(value)
    if attrs is None:
        attrs = _ATTR_CACHE[value] = MountAttr(value & _KNOWN_ATTRS)
    return attrs


def _live_from_buffer(sb: StatmountBuffer, got: int) -> LiveMount:
    # Decodes in place from the reused buffer; a field whose bit is missing from the
    # answer reads as empty, exactly as a StatmountResult's None did before.
    if got & _BIT_SB_BASIC:
        major, minor, sb_flags = sb.unpack(_SB_BASIC_AT[1], _SB_BASIC_AT[0])
    else:
        major = minor = sb_flags = 0
    if got & _BIT_MNT_BASIC:
        mnt_id, parent_id, id_old, parent_old, attr, prop, peer, master_id = sb.unpack(_MNT_BASIC_AT[1], _MNT_BASIC_AT[0])
        unique_id: int | None = mnt_id
        unique_parent: int | None = parent_id
    else:
        unique_id = unique_parent = None
        id_old = parent_old = attr = prop = peer = master_id = 0
    options = [name for bit, name in _SB_FLAG_OPTIONS if sb_flags & bit]
    if got & _BIT_MNT_OPTS:
        opts = sb.string(_OFF_MNT_OPTS)
        if opts:
            options.extend(unescape_mountinfo(o) for o in opts.split(","))
    shared = bool(prop & _MS_SHARED)
    slave = bool(prop & _MS_SLAVE)
    master = master_id if slave else None
    # mountinfo prints propagate_from only when it differs from the master.
    propagate_from: int | None = None
    if slave and got & _BIT_PROPAGATE_FROM:
        value = sb.u64(_PROPAGATE_FROM_AT)
        if value not in (0, master):
            propagate_from = value
    fs_type = sb.string(_OFF_FS_TYPE) if got & _BIT_FS_TYPE else ""
    if got & _BIT_FS_SUBTYPE:
        subtype = sb.string(_OFF_FS_SUBTYPE)
        if subtype:
            fs_type = f"{fs_type}.{subtype}"
    return LiveMount(
        mnt_id=unique_id,
        mnt_id_old=id_old,
        parent_id=unique_parent,
        parent_id_old=parent_old,
        mount_point=sb.string(_OFF_MNT_POINT) if got & _BIT_MNT_POINT else "",
        root=sb.string(_OFF_MNT_ROOT) if got & _BIT_MNT_ROOT else "",
        fs_type=fs_type,
        source=sb.string(_OFF_SB_SOURCE) if got & _BIT_SB_SOURCE else "",
        super_options=tuple(options),
        super_readonly=bool(sb_flags & _SB_RDONLY),
        attrs=_mount_attr(attr),
        propagation=_propagation(shared, slave, bool(prop & _MS_UNBINDABLE)),
        peer_group=(peer or None) if shared else None,
        master=master,
        propagate_from=propagate_from,
        dev=(major, minor),
    )


def statmount_live(mnt_id: int, *, ns_id: int = 0) -> LiveMount:
    """One mount, by unique id, as a LiveMount (statmount with the fields a table needs)."""
    sb = StatmountBuffer()
    return _live_from_buffer(sb, sb.call(mnt_id, _TABLE_MASK, ns_id=ns_id))


def read_statmount(*, ns_id: int = 0, beneath: Sequence[str] | None = None) -> list[LiveMount]:
    """Mounts of the current namespace via listmount + statmount, ascending unique id.

    Without ``beneath``: every mount. With it: only mounts on or below those
    paths, found from the mounts that hold them (see :func:`read_live_table`).
    A mount unmounted between listmount and statmount (ENOENT) is left out.
    """
    if beneath is not None and ns_id == 0:
        paths = _normalize_paths(beneath)
        if "/" not in paths:
            found = _statmount_beneath(paths)
            if found is not None:
                return found
            return [m for m in read_statmount() if _is_beneath_any(m.mount_point, paths)]
    sb = StatmountBuffer()
    out: list[LiveMount] = []
    for mnt_id in iter_mounts():
        try:
            got = sb.call(mnt_id, _TABLE_MASK, ns_id=ns_id)
        except KernelError as exc:
            if exc.errno != errno.ENOENT:
                raise
            continue
        out.append(_live_from_buffer(sb, got))
    if beneath is not None:
        paths = _normalize_paths(beneath)
        out = [m for m in out if _is_beneath_any(m.mount_point, paths)]
    return out


_SCAN_MASK = int(StatmountMask.MNT_BASIC | StatmountMask.MNT_POINT)
#: Whether listmount(id) lists every mount beneath ``id`` (Linux 6.11+) rather than
#: only its children (6.8-6.10). None until a listing has shown which.
_listmount_is_recursive: bool | None = None


def _statmount_beneath(paths: tuple[str, ...]) -> list[LiveMount] | None:
    """Mounts on or below ``paths`` without reading the rest of the namespace.

    For each path: statx gives the unique id of the mount that holds it; going up
    the parents while the mount point is the path itself passes the stack of
    mounts on it, and ends at the mount whose directory the path is in (the
    *holder*). Every mount on or below the path is in the holder's subtree
    (including mounts later covered by one on the path itself), so listmount of
    the holder, filtered by mount point, is the whole answer. The cost is that of
    the holder's subtree, not of the namespace.

    None when the unique ids needed are missing (before Linux 6.8, or a path that
    cannot be looked up): the caller reads the whole table and filters it.
    """
    sb = StatmountBuffer()
    found: dict[int, LiveMount] = {}
    holders: set[int] = set()
    for path in paths:
        try:
            ids = statx_mount_ids(AT_FDCWD, path, AtFlag.SYMLINK_NOFOLLOW)
        except KernelError:
            return None
        if not ids.unique:
            return None
        try:
            holder = _holder_of(sb, ids.mnt_id, path)
        except KernelError as exc:
            if exc.errno != errno.ENOENT:  # unmounted under our feet: read it all instead
                raise
            return None
        if holder in holders:
            continue
        holders.add(holder)
        for mnt_id in _subtree(sb, holder, paths):
            if mnt_id in found:
                continue
            try:
                got = sb.call(mnt_id, _TABLE_MASK)
            except KernelError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                continue
            mount = _live_from_buffer(sb, got)
            if _is_beneath_any(mount.mount_point, paths):
                found[mnt_id] = mount
    return [found[k] for k in sorted(found)]


def _holder_of(sb: StatmountBuffer, mnt_id: int, path: str) -> int:
    # Up the parent chain past every mount stacked on ``path``; the namespace root
    # is its own parent.
    while True:
        got = sb.call(mnt_id, _SCAN_MASK)
        point = sb.string(_OFF_MNT_POINT) if got & _BIT_MNT_POINT else ""
        parent = sb.u64(48)
        if point != path or parent in (0, mnt_id):
            return mnt_id
        mnt_id = parent


def _subtree(sb: StatmountBuffer, holder: int, paths: tuple[str, ...]) -> Iterator[int]:
    """Ids of the mounts below ``holder`` that may lie on or below ``paths``.

    On a kernel whose listmount lists only children, only the children on or
    below a path are descended into; a recursive listmount is read once.
    """
    global _listmount_is_recursive
    queue = [holder]
    while queue:
        parent = queue.pop()
        for mnt_id in _iter_listmount(parent):
            try:
                got = sb.call(mnt_id, _SCAN_MASK)
            except KernelError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                continue
            if sb.u64(48) != parent:  # a grandchild in the listing: listmount is recursive
                _listmount_is_recursive = True
            point = sb.string(_OFF_MNT_POINT) if got & _BIT_MNT_POINT else ""
            if not _is_beneath_any(point, paths):
                continue
            yield mnt_id
            if not _listmount_is_recursive:
                queue.append(mnt_id)


def _iter_listmount(mnt_id: int, batch: int = 512) -> Iterator[int]:
    last = 0
    while True:
        ids = listmount(mnt_id, last_id=last, batch=batch)
        yield from ids
        if len(ids) < batch:
            return
        last = ids[-1]
