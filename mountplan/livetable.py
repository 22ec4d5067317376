"""The live mount table: the LiveTable query object, read from statmount(2) or /proc/self/mountinfo.

The readers and the record type live in :mod:`mountplan.mountinfo`,
:mod:`mountplan.live_statmount` and :mod:`mountplan.live_mount`; their public
names are importable from here too.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mountplan._kernel.features import detect
from mountplan.errors import KernelError
from mountplan.live_mount import LiveMount, TableSource, _normalize_path
from mountplan.live_statmount import read_statmount, statmount_live
from mountplan.mountinfo import escape_mountinfo, parse_mountinfo, read_mountinfo, unescape_mountinfo

__all__ = [
    "LiveMount",
    "LiveTable",
    "TableSource",
    "descendants",
    "escape_mountinfo",
    "mount_key",
    "parse_mountinfo",
    "read_live_table",
    "read_mountinfo",
    "read_statmount",
    "statmount_live",
    "unescape_mountinfo",
]


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


def descendants(table: LiveTable, mount: LiveMount) -> list[LiveMount]:
    """Every mount attached (directly or not) beneath ``mount``, from the real parent links."""
    key = mount_key(mount)
    children: dict[int, list[LiveMount]] = {}
    for m in table:
        parent = table.parent(m)
        if parent is not None and parent is not m:
            children.setdefault(mount_key(parent), []).append(m)
    out: list[LiveMount] = []
    todo = list(children.get(key, ()))
    while todo:
        m = todo.pop()
        out.append(m)
        todo.extend(children.get(mount_key(m), ()))
    return out


def mount_key(m: LiveMount) -> int:
    """A mount's id in the table's own id space (unique where the table has them)."""
    return m.mnt_id if m.mnt_id is not None else m.mnt_id_old
