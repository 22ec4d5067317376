"""The live mount table, read from statmount(2) or /proc/self/mountinfo into one record type."""

from __future__ import annotations

import enum
import errno
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from mountplan._kernel.constants import AtFlag, MountAttr, Propagation
from mountplan._kernel.features import detect
from mountplan._kernel.statmount import StatmountBuffer, StatmountMask, iter_mounts, listmount
from mountplan._kernel.syscalls import statx_mount_ids
from mountplan.errors import KernelError

__all__ = [
    "LiveMount",
    "LiveTable",
    "TableSource",
    "escape_mountinfo",
    "parse_mountinfo",
    "read_live_table",
    "read_mountinfo",
    "read_statmount",
    "unescape_mountinfo",
]


class TableSource(enum.Enum):
    """Where a live table comes from."""

    AUTO = "auto"
    STATMOUNT = "statmount"
    MOUNTINFO = "mountinfo"


@dataclass(frozen=True, slots=True)
class LiveMount:
    """One mount as the kernel reports it, whichever interface it came from.

    ``mnt_id``/``parent_id`` are the unique 64-bit ids (never reused) and are
    ``None`` when the table came from mountinfo, which only has the reusable
    32-bit ``mnt_id_old``/``parent_id_old``. ``propagation`` is one value:
    SHARED wins over UNBINDABLE over SLAVE over PRIVATE, and ``master`` is kept
    whenever the mount is a slave, so "shared and slave" is SHARED plus a master.
    """

    mnt_id: int | None
    mnt_id_old: int
    parent_id: int | None
    parent_id_old: int
    mount_point: str
    root: str
    fs_type: str
    source: str
    super_options: tuple[str, ...]
    super_readonly: bool
    attrs: MountAttr
    propagation: Propagation
    peer_group: int | None
    master: int | None
    propagate_from: int | None
    dev: tuple[int, int]

    @property
    def is_slave(self) -> bool:
        """The mount receives propagation from a master peer group."""
        return self.master is not None


# mountinfo escapes exactly these in paths and sources (fs/proc_namespace.c mangle()).
_ESCAPE = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}
_ESCAPE_RE = re.compile(r"[ \t\n\\]")
_UNESCAPE_RE = re.compile(r"\\([0-3][0-7]{2})")


def escape_mountinfo(text: str) -> str:
    """Escape a path or source the way the kernel writes it into mountinfo."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPE[m.group()], text)


def _unescape_char(match: re.Match[str]) -> str:
    value = int(match.group(1), 8)
    # A byte above 0x7f stands for itself in the raw file, which we decode with
    # surrogateescape; map an escaped one the same way so both spellings agree.
    return chr(value) if value < 0x80 else chr(0xDC00 + value)


def unescape_mountinfo(text: str) -> str:
    """Undo the kernel's ``\\ooo`` octal escapes (``\\040`` is a space)."""
    if "\\" not in text:
        return text
    return _UNESCAPE_RE.sub(_unescape_char, text)


_PER_MOUNT_ATTRS = {
    "ro": MountAttr.RDONLY,
    "nosuid": MountAttr.NOSUID,
    "nodev": MountAttr.NODEV,
    "noexec": MountAttr.NOEXEC,
    "noatime": MountAttr.NOATIME,
    "nodiratime": MountAttr.NODIRATIME,
    "nosymfollow": MountAttr.NOSYMFOLLOW,
    "idmapped": MountAttr.IDMAP,
}
_KNOWN_ATTRS = int(
    MountAttr.RDONLY
    | MountAttr.NOSUID
    | MountAttr.NODEV
    | MountAttr.NOEXEC
    | MountAttr.NOATIME
    | MountAttr.STRICTATIME
    | MountAttr.NODIRATIME
    | MountAttr.NOSYMFOLLOW
    | MountAttr.IDMAP
)


def _attrs_from_options(options: str) -> MountAttr:
    attrs = 0
    relatime = False
    for opt in options.split(","):
        flag = _PER_MOUNT_ATTRS.get(opt)
        if flag is not None:
            attrs |= flag
        elif opt == "relatime":
            relatime = True
    # mountinfo prints "relatime" or "noatime"; neither means strictatime.
    if not relatime and not attrs & MountAttr.NOATIME:
        attrs |= MountAttr.STRICTATIME
    return MountAttr(attrs)


def _propagation(shared: bool, slave: bool, unbindable: bool) -> Propagation:
    if shared:
        return Propagation.SHARED
    if unbindable:
        return Propagation.UNBINDABLE
    if slave:
        return Propagation.SLAVE
    return Propagation.PRIVATE


def _parse_line(line: str) -> LiveMount:
    # Fields are separated by single spaces; a field never contains one (escaped
    # as \040), but the source field may be empty, which gives two spaces in a row.
    parts = line.split(" ")
    try:
        sep = parts.index("-", 6)
    except ValueError:
        raise ValueError(f"mountinfo line without ' - ' separator: {line!r}") from None
    if len(parts) - sep != 4:
        raise ValueError(f"mountinfo line needs fstype, source and options after '-': {line!r}")
    mnt_id, parent, dev, root, mount_point, mount_opts = parts[:6]
    shared = slave = unbindable = False
    peer = master = propagate_from = None
    for tag in parts[6:sep]:
        name, _, value = tag.partition(":")
        if name == "shared":
            shared, peer = True, int(value)
        elif name == "master":
            slave, master = True, int(value)
        elif name == "propagate_from":
            propagate_from = int(value)
        elif name == "unbindable":
            unbindable = True
    fs_type, source, super_opts = parts[sep + 1 :]
    ro_rw, _, rest = super_opts.partition(",")
    major, _, minor = dev.partition(":")
    return LiveMount(
        mnt_id=None,
        mnt_id_old=int(mnt_id),
        parent_id=None,
        parent_id_old=int(parent),
        mount_point=unescape_mountinfo(mount_point),
        root=unescape_mountinfo(root),
        fs_type=fs_type,
        source=unescape_mountinfo(source),
        super_options=tuple(unescape_mountinfo(o) for o in rest.split(",")) if rest else (),
        super_readonly=ro_rw == "ro",
        attrs=_attrs_from_options(mount_opts),
        propagation=_propagation(shared, slave, unbindable),
        peer_group=peer,
        master=master,
        propagate_from=propagate_from,
        dev=(int(major), int(minor)),
    )


def parse_mountinfo(text: str) -> list[LiveMount]:
    """Parse mountinfo text (proc(5) format) into LiveMount records, in file order.

    Raises ValueError for a malformed line. Bytes that are not UTF-8 should be
    decoded with ``surrogateescape`` (as :func:`read_mountinfo` does).
    """
    return [_parse_line(line) for line in text.split("\n") if line]


def read_mountinfo(path: str = "/proc/self/mountinfo", *, beneath: Sequence[str] | None = None) -> list[LiveMount]:
    """Read and parse a mountinfo file; with ``beneath``, only mounts on or below those paths.

    Every line is looked at, but only a matching one is parsed into a record: the
    mount point field is compared in its escaped form, which is the same test
    (escaping is one-to-one and never touches ``/``).
    """
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", "surrogateescape")
    if beneath is None:
        return parse_mountinfo(text)
    paths = _normalize_paths(beneath)
    if "/" in paths:
        return parse_mountinfo(text)
    exact = {escape_mountinfo(p) for p in paths}
    prefixes = tuple(e + "/" for e in exact)
    out: list[LiveMount] = []
    for line in text.split("\n"):
        if not line:
            continue
        parts = line.split(" ", 5)
        if len(parts) < 6:
            _parse_line(line)  # raises the parser's ValueError for a malformed line
        point = parts[4]
        if point in exact or point.startswith(prefixes):
            out.append(_parse_line(line))
    return out


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
_AT_FDCWD = -100
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
            ids = statx_mount_ids(_AT_FDCWD, path, AtFlag.SYMLINK_NOFOLLOW)
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


@dataclass(frozen=True, slots=True)
class LiveTable:
    """A snapshot of the mount table with lookups.

    ``mounts`` keeps the kernel's namespace order: ascending unique id for
    statmount, file order for mountinfo (the same order on Linux 6.8+, where the
    namespace keeps its mounts sorted by unique id).
    """

    mounts: tuple[LiveMount, ...]
    source: TableSource
    _by_id: dict[int, LiveMount] = field(init=False, repr=False, compare=False)
    _by_old_id: dict[int, LiveMount] = field(init=False, repr=False, compare=False)
    _by_point: dict[str, tuple[LiveMount, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {m.mnt_id: m for m in self.mounts if m.mnt_id is not None}
        by_old = {m.mnt_id_old: m for m in self.mounts}
        groups: dict[str, list[LiveMount]] = {}
        for m in self.mounts:
            groups.setdefault(m.mount_point, []).append(m)
        by_point = {p: _stack_order(g) for p, g in groups.items()}
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_by_old_id", by_old)
        object.__setattr__(self, "_by_point", by_point)

    def __len__(self) -> int:
        return len(self.mounts)

    def __iter__(self) -> Iterator[LiveMount]:
        return iter(self.mounts)

    def by_id(self, mnt_id: int) -> LiveMount | None:
        """The mount with this unique 64-bit id (always None for a mountinfo table)."""
        return self._by_id.get(mnt_id)

    def by_old_id(self, mnt_id_old: int) -> LiveMount | None:
        """The mount with this 32-bit id (as mountinfo and findmnt show it)."""
        return self._by_old_id.get(mnt_id_old)

    def parent(self, mount: LiveMount) -> LiveMount | None:
        """The mount this one is attached to, or None for the namespace root."""
        if mount.parent_id is not None:
            return self._by_id.get(mount.parent_id)
        parent = self._by_old_id.get(mount.parent_id_old)
        return None if parent is mount else parent

    def at(self, mount_point: str) -> list[LiveMount]:
        """Every mount on exactly this path, bottom of the stack first."""
        return list(self._by_point.get(_normalize_path(mount_point), ()))

    def beneath(self, path: str) -> list[LiveMount]:
        """Mounts on ``path`` or anywhere below it, in table order."""
        path = _normalize_path(path)
        if path == "/":
            return list(self.mounts)
        prefix = path + "/"
        return [m for m in self.mounts if m.mount_point == path or m.mount_point.startswith(prefix)]


def _normalize_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"mount point must be absolute, got {path!r}")
    stripped = path.rstrip("/")
    return stripped or "/"


def _normalize_paths(paths: Iterable[str]) -> tuple[str, ...]:
    if isinstance(paths, str):
        raise TypeError("beneath takes a sequence of paths, not one string")
    return tuple(dict.fromkeys(_normalize_path(p) for p in paths))


def _is_beneath_any(point: str, paths: tuple[str, ...]) -> bool:
    # The same test as LiveTable.beneath: the path itself or below a "/" boundary.
    for path in paths:
        if point == path or point.startswith(path + "/") or path == "/":
            return True
    return False


def _stack_order(group: list[LiveMount]) -> tuple[LiveMount, ...]:
    if len(group) == 1:
        return (group[0],)
    # A mount stacked on another has the lower one as its parent, so depth in the
    # parent chain inside the group orders a stack even after MOVE_MOUNT_BENEATH.
    def key_of(m: LiveMount) -> int:
        return m.mnt_id if m.mnt_id is not None else m.mnt_id_old

    def parent_key(m: LiveMount) -> int:
        return m.parent_id if m.parent_id is not None else m.parent_id_old

    members = {key_of(m): m for m in group}
    depth: dict[int, int] = {}
    for m in group:
        chain: list[int] = []
        cur: LiveMount | None = m
        while cur is not None and key_of(cur) not in depth and key_of(cur) not in chain:
            chain.append(key_of(cur))
            nxt = members.get(parent_key(cur))
            cur = None if nxt is cur else nxt
        base = depth[key_of(cur)] + 1 if cur is not None and key_of(cur) in depth else 0
        for offset, k in enumerate(reversed(chain)):
            depth[k] = base + offset

    order = {id(m): i for i, m in enumerate(group)}
    return tuple(sorted(group, key=lambda m: (depth[key_of(m)], order[id(m)])))


def _has_statmount() -> bool:
    features = detect()
    return features.has("statmount") and features.has("listmount")


def read_live_table(source: TableSource = TableSource.AUTO, *, beneath: Sequence[str] | None = None) -> LiveTable:
    """Read the current namespace's mount table, or only the part on or below ``beneath``.

    AUTO uses statmount when the kernel has it (ENOSYS or a seccomp EPERM count
    as absent) and falls back to /proc/self/mountinfo.

    ``beneath`` (absolute paths) keeps exactly the mounts that
    ``read_live_table(source).beneath(path)`` would give for one of the paths,
    in table order, without the cost of the rest of the namespace on statmount:
    listmount from the mount that holds each path, statmount of only those. On
    mountinfo every line is still read, but only matching lines are parsed.
    Lookups in the result see only those mounts: ``parent()`` of a mount whose
    parent is outside the paths is None.
    """
    if source is TableSource.MOUNTINFO:
        return LiveTable(tuple(read_mountinfo(beneath=beneath)), TableSource.MOUNTINFO)
    if source is TableSource.STATMOUNT:
        return LiveTable(tuple(read_statmount(beneath=beneath)), TableSource.STATMOUNT)
    if _has_statmount():
        try:
            return LiveTable(tuple(read_statmount(beneath=beneath)), TableSource.STATMOUNT)
        except KernelError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
    return LiveTable(tuple(read_mountinfo(beneath=beneath)), TableSource.MOUNTINFO)
