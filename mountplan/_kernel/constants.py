"""Kernel constants for the new mount API, as IntFlag/IntEnum so errors name them.

Values come from the uapi headers (include/uapi/linux/mount.h, openat2.h, stat.h);
see ../shared/kernel.md. We use MOUNT_ATTR_* rather than MS_* values that only
happen to coincide.
"""

from __future__ import annotations

import enum
import functools
import os

#: The dirfd that means "the caller's cwd" (<linux/fcntl.h>): an absolute path ignores it.
AT_FDCWD = -100


class FsopenFlag(enum.IntFlag):
    CLOEXEC = 0x1


class FsmountFlag(enum.IntFlag):
    CLOEXEC = 0x1


class FspickFlag(enum.IntFlag):
    CLOEXEC = 0x1
    SYMLINK_NOFOLLOW = 0x2
    NO_AUTOMOUNT = 0x4
    EMPTY_PATH = 0x8


class FsconfigCmd(enum.IntEnum):
    SET_FLAG = 0
    SET_STRING = 1
    SET_BINARY = 2
    SET_PATH = 3
    SET_PATH_EMPTY = 4
    SET_FD = 5
    CMD_CREATE = 6
    CMD_RECONFIGURE = 7
    CMD_CREATE_EXCL = 8


class OpenTreeFlag(enum.IntFlag):
    CLONE = 0x1
    CLOEXEC = os.O_CLOEXEC
    SYMLINK_NOFOLLOW = 0x100
    NO_AUTOMOUNT = 0x800
    EMPTY_PATH = 0x1000
    RECURSIVE = 0x8000


class AtFlag(enum.IntFlag):
    SYMLINK_NOFOLLOW = 0x100
    NO_AUTOMOUNT = 0x800
    EMPTY_PATH = 0x1000
    RECURSIVE = 0x8000


class MoveMountFlag(enum.IntFlag):
    F_SYMLINKS = 0x1
    F_AUTOMOUNTS = 0x2
    F_EMPTY_PATH = 0x4
    T_SYMLINKS = 0x10
    T_AUTOMOUNTS = 0x20
    T_EMPTY_PATH = 0x40
    SET_GROUP = 0x100
    BENEATH = 0x200


class MountAttr(enum.IntFlag):
    """``MOUNT_ATTR_*``: per-mount attributes (fsmount, mount_setattr, statmount)."""

    RDONLY = 0x1
    NOSUID = 0x2
    NODEV = 0x4
    NOEXEC = 0x8
    NOATIME = 0x10
    STRICTATIME = 0x20
    NODIRATIME = 0x80
    IDMAP = 0x100000
    NOSYMFOLLOW = 0x200000


#: The atime field is a 3-bit mode, not independent flags: RELATIME is 0.
MOUNT_ATTR_ATIME_MASK = 0x70


class Propagation(enum.IntEnum):
    """Values for ``mount_attr.propagation`` (exactly one at a time)."""

    UNBINDABLE = 1 << 17
    PRIVATE = 1 << 18
    SLAVE = 1 << 19
    SHARED = 1 << 20


class UmountFlag(enum.IntFlag):
    FORCE = 1
    DETACH = 2
    EXPIRE = 4
    NOFOLLOW = 8


class Resolve(enum.IntFlag):
    """``RESOLVE_*`` for openat2."""

    NO_XDEV = 0x1
    NO_MAGICLINKS = 0x2
    NO_SYMLINKS = 0x4
    BENEATH = 0x8
    IN_ROOT = 0x10
    CACHED = 0x20


class OpenFlag(enum.IntFlag):
    """The ``O_*`` flags mountplan passes to openat2 (values are per-arch, so from os)."""

    RDONLY = os.O_RDONLY
    PATH = os.O_PATH
    DIRECTORY = os.O_DIRECTORY
    NOFOLLOW = os.O_NOFOLLOW
    CLOEXEC = os.O_CLOEXEC
    CREAT = os.O_CREAT
    EXCL = os.O_EXCL
    WRONLY = os.O_WRONLY


class StatxMask(enum.IntFlag):
    MNT_ID = 0x1000
    MNT_ID_UNIQUE = 0x4000


def flag_names(value: enum.IntFlag | int, kind: type[enum.IntFlag] | None = None) -> str:
    """Render a flag set as ``A|B`` (or ``0``); unknown bits are shown in hex."""
    if kind is not None and not isinstance(value, kind):
        value = kind(value)
    # Errors for expected misses (ENOENT probes) render flags on every call.
    if not isinstance(value, enum.IntFlag):
        return hex(value) if value else "0"
    return _flag_names(type(value), int(value))


@functools.lru_cache(maxsize=1024)
def _flag_names(kind: type[enum.IntFlag], raw: int) -> str:
    value = kind(raw)
    if not int(value):
        return "0"
    if not isinstance(value, enum.IntFlag):
        return hex(value)
    names = [m.name for m in type(value) if m.name and m.value and (m.value & int(value)) == m.value]
    known = 0
    for m in type(value):
        if m.name in names:
            known |= m.value
    rest = int(value) & ~known
    if rest:
        names.append(hex(rest))
    return "|".join(names)
