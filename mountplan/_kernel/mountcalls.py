"""Calls on mounts themselves: open_tree, open_tree_attr, mount_setattr, move_mount and unmounting."""

from __future__ import annotations

import ctypes
import functools
import struct

from . import _libc
from ._wrapper import _NO_ATTRS, _path, _raise
from .constants import (
    MOUNT_ATTR_ATIME_MASK,
    AtFlag,
    MountAttr,
    MoveMountFlag,
    OpenTreeFlag,
    Propagation,
    UmountFlag,
    flag_names,
)
from .fd import Fd

__all__ = ["mount_setattr", "move_mount", "open_tree", "open_tree_attr", "umount_at"]


def open_tree(dirfd: int, path: str, flags: OpenTreeFlag) -> Fd:
    """Open (or with CLONE, copy as a detached tree) the mount at ``path``."""
    ret = _libc.syscall(
        "open_tree", ctypes.c_int(dirfd), ctypes.c_char_p(_path(path)), ctypes.c_uint(flags)
    )
    if ret < 0:
        _raise(-ret, "open_tree", [path], flag_names(flags, OpenTreeFlag))
    return Fd(ret, f"open_tree:{path}")


@functools.lru_cache(maxsize=256)
def _packed_attr(attr_set: int, attr_clr: int, propagation: int, userns_fd: int) -> bytes:
    # Setting any atime mode needs the whole atime field cleared first (kernel.md).
    if attr_set & MOUNT_ATTR_ATIME_MASK or attr_clr & MOUNT_ATTR_ATIME_MASK:
        attr_clr |= MOUNT_ATTR_ATIME_MASK
    return _MOUNT_ATTR.pack(attr_set, attr_clr, propagation, userns_fd)


def _mount_attr(
    attr_set: MountAttr, attr_clr: MountAttr, propagation: Propagation | None, userns_fd: int = 0
) -> bytes:
    # The kernel only reads struct mount_attr (copy_struct_from_user): one immutable
    # copy per combination (a handful per plan) serves every call.
    return _packed_attr(int(attr_set), int(attr_clr), int(propagation or 0), userns_fd)


_MOUNT_ATTR = struct.Struct("<QQQQ")
_NOFOLLOW = int(UmountFlag.NOFOLLOW)
_MOUNT_ATTR_SIZE = ctypes.c_size_t(_MOUNT_ATTR.size)


def _attr_syscall(name: str, dirfd: int, path: str, flags: int, attr: bytes) -> int:
    """open_tree_attr and mount_setattr take the same arguments: dirfd, path, flags, struct mount_attr, its size."""
    return _libc.syscall(
        name, ctypes.c_int(dirfd), ctypes.c_char_p(_path(path)), ctypes.c_uint(flags), ctypes.c_char_p(attr),
        _MOUNT_ATTR_SIZE,
    )


def _describe_attr(
    attr_set: MountAttr, attr_clr: MountAttr, propagation: Propagation | None, userns_fd: int = 0
) -> str:
    text = f"set={flag_names(attr_set, MountAttr)} clr={flag_names(attr_clr, MountAttr)}"
    if attr_set & MountAttr.IDMAP:
        text += f" userns_fd={userns_fd}"
    if propagation is not None:
        text += f" propagation={propagation.name}"
    return text


def open_tree_attr(
    dirfd: int,
    path: str,
    flags: OpenTreeFlag,
    attr_set: MountAttr = _NO_ATTRS,
    attr_clr: MountAttr = _NO_ATTRS,
    propagation: Propagation | None = None,
) -> Fd:
    """``open_tree_attr`` (6.15): clone and set attributes in one call."""
    ret = _attr_syscall("open_tree_attr", dirfd, path, flags, _mount_attr(attr_set, attr_clr, propagation))
    if ret < 0:
        _raise(
            -ret,
            "open_tree_attr",
            [path],
            f"{flag_names(flags, OpenTreeFlag)} {_describe_attr(attr_set, attr_clr, propagation)}",
        )
    return Fd(ret, f"open_tree_attr:{path}")


def mount_setattr(
    dirfd: int,
    path: str,
    flags: AtFlag,
    attr_set: MountAttr = _NO_ATTRS,
    attr_clr: MountAttr = _NO_ATTRS,
    propagation: Propagation | None = None,
    *,
    userns_fd: int = 0,
) -> None:
    """Change attributes and/or propagation of a mount (attached or detached).

    ``userns_fd`` (with ``MOUNT_ATTR_IDMAP`` in ``attr_set``) is the user namespace
    whose mapping an idmapped mount takes; the kernel allows that only on a
    detached mount that is not idmapped yet.
    """
    ret = _attr_syscall("mount_setattr", dirfd, path, flags, _mount_attr(attr_set, attr_clr, propagation, userns_fd))
    if ret < 0:
        _raise(
            -ret,
            "mount_setattr",
            [path] if path else [],
            f"{flag_names(flags, AtFlag)} {_describe_attr(attr_set, attr_clr, propagation, userns_fd)}",
        )


def move_mount(
    from_dirfd: int,
    from_path: str,
    to_dirfd: int,
    to_path: str,
    flags: MoveMountFlag,
    shown_target: str = "",
) -> None:
    """Attach (or move) a mount. ``shown_target`` names the target in errors."""
    ret = _libc.syscall(
        "move_mount",
        ctypes.c_int(from_dirfd),
        ctypes.c_char_p(_path(from_path)),
        ctypes.c_int(to_dirfd),
        ctypes.c_char_p(_path(to_path)),
        ctypes.c_uint(flags),
    )
    if ret < 0:
        _raise(-ret, "move_mount", [shown_target or to_path], flag_names(flags, MoveMountFlag))

def umount_at(dirfd: int, name: str, flags: UmountFlag = UmountFlag.NOFOLLOW, shown: str = "") -> None:
    """Unmount the mount on ``name`` inside directory ``dirfd``.

    There is no umountat(2). Going through the ``/proc/self/fd/N`` magic link pins
    the parent directory without changing the process cwd (fchdir would, for every
    thread), so this is safe to call from several threads. ``name`` must be a single
    component so that UMOUNT_NOFOLLOW covers the whole user-controlled part of the
    path: a symlink planted at ``name`` is never followed.
    """
    if not name or "/" in name or name in {".", ".."}:
        raise ValueError(f"umount_at needs one path component, got {name!r}")
    path = f"/proc/self/fd/{dirfd}/{name}"
    raw = int(flags) | _NOFOLLOW
    ret = _libc.call(_libc.umount2, _path(path), raw)
    if ret < 0:
        _raise(-ret, "umount2", [shown or name], flag_names(raw, UmountFlag))
