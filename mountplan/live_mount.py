"""One mount as the kernel reports it (LiveMount), and the rules both table readers share."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from mountplan._kernel.constants import MountAttr, Propagation

__all__ = ["LiveMount", "TableSource"]


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


#: The attribute bits a LiveMount keeps, whichever reader made it.
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


def _propagation(shared: bool, slave: bool, unbindable: bool) -> Propagation:
    if shared:
        return Propagation.SHARED
    if unbindable:
        return Propagation.UNBINDABLE
    if slave:
        return Propagation.SLAVE
    return Propagation.PRIVATE


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

