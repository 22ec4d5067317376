"""Attributes and propagation through the classic mount(2), for kernels without mount_setattr (< 5.12).

Both act on an *attached* mount through the ``/proc/self/fd/N`` magic link of an
fd of its root, so the mount changed is exactly the one the fd holds, never
whatever is on top of its mount point now. mount(2) cannot reach a detached
mount, so on these kernels attributes are set right after move_mount.
"""

from __future__ import annotations

import ctypes
import enum
import os

from mountplan.errors import KernelError

from . import _libc
from .constants import MountAttr, Propagation, flag_names


class MsFlag(enum.IntFlag):
    """``MS_*`` flags of mount(2) (include/uapi/linux/mount.h)."""

    RDONLY = 1
    NOSUID = 2
    NODEV = 4
    NOEXEC = 8
    REMOUNT = 32
    NOATIME = 1024
    NODIRATIME = 2048
    BIND = 4096
    REC = 0x4000
    UNBINDABLE = 1 << 17
    PRIVATE = 1 << 18
    SLAVE = 1 << 19
    SHARED = 1 << 20
    RELATIME = 1 << 21
    STRICTATIME = 1 << 24
    NOSYMFOLLOW = 256


_ATTR_TO_MS = {
    MountAttr.RDONLY: MsFlag.RDONLY,
    MountAttr.NOSUID: MsFlag.NOSUID,
    MountAttr.NODEV: MsFlag.NODEV,
    MountAttr.NOEXEC: MsFlag.NOEXEC,
    MountAttr.NODIRATIME: MsFlag.NODIRATIME,
    MountAttr.NOSYMFOLLOW: MsFlag.NOSYMFOLLOW,
}
_ST_TO_ATTR = {
    os.ST_RDONLY: MountAttr.RDONLY,
    os.ST_NOSUID: MountAttr.NOSUID,
    os.ST_NODEV: MountAttr.NODEV,
    os.ST_NOEXEC: MountAttr.NOEXEC,
    os.ST_NODIRATIME: MountAttr.NODIRATIME,
    os.ST_NOATIME: MountAttr.NOATIME,
}
_ATIME_MASK = 0x70
_NONE = MountAttr(0)


def current_attrs(mnt_fd: int) -> MountAttr:
    """The per-mount flags of the mount ``mnt_fd`` is the root of (statfs f_flags), as MOUNT_ATTR bits."""
    flags = os.statvfs(f"/proc/self/fd/{mnt_fd}").f_flag
    attrs = MountAttr(0)
    for st, attr in _ST_TO_ATTR.items():
        if flags & st:
            attrs |= attr
    if not flags & (os.ST_NOATIME | os.ST_RELATIME):
        attrs |= MountAttr.STRICTATIME
    return attrs


def _call(target: str, flags: MsFlag, shown: str) -> None:
    ret = _libc.call(_libc.mount, None, os.fsencode(target), None, ctypes.c_ulong(int(flags)), None)
    if ret < 0:
        raise KernelError(-ret, "mount", paths=[shown or target], flags=flag_names(flags, MsFlag))


def remount_attrs(mnt_fd: int, attr_set: MountAttr, attr_clr: MountAttr = _NONE, shown: str = "") -> None:
    """``mount(NULL, /proc/self/fd/N, NULL, MS_REMOUNT|MS_BIND|flags)``: set and clear per-mount flags.

    A bind remount *replaces* the per-mount flag set, so the flags the mount has
    and the call does not clear are kept (in a user namespace the kernel refuses
    to drop the locked ones).
    """
    have = current_attrs(mnt_fd)
    keep = MountAttr(int(have) & ~int(attr_clr))
    if int(attr_set) & _ATIME_MASK or int(attr_clr) & _ATIME_MASK:
        keep = MountAttr(int(keep) & ~_ATIME_MASK)
    want = MountAttr(int(keep) | int(attr_set))
    flags = MsFlag.REMOUNT | MsFlag.BIND
    for attr, ms in _ATTR_TO_MS.items():
        if want & attr:
            flags |= ms
    atime = int(want) & _ATIME_MASK
    flags |= {int(MountAttr.NOATIME): MsFlag.NOATIME, int(MountAttr.STRICTATIME): MsFlag.STRICTATIME}.get(atime, MsFlag.RELATIME)
    _call(f"/proc/self/fd/{mnt_fd}", flags, shown)


_PROPAGATION = {
    Propagation.PRIVATE: MsFlag.PRIVATE,
    Propagation.SHARED: MsFlag.SHARED,
    Propagation.SLAVE: MsFlag.SLAVE,
    Propagation.UNBINDABLE: MsFlag.UNBINDABLE,
}


def set_propagation(mnt_fd: int, propagation: Propagation, *, recursive: bool, shown: str = "") -> None:
    """``mount(NULL, /proc/self/fd/N, NULL, MS_<TYPE>[|MS_REC])`` on the mount ``mnt_fd`` is the root of."""
    flags = _PROPAGATION[propagation] | (MsFlag.REC if recursive else MsFlag(0))
    _call(f"/proc/self/fd/{mnt_fd}", flags, shown)
