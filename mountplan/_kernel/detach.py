"""Detach exactly the mount an fd refers to, whatever is mounted on its path now."""

from __future__ import annotations

import ctypes
import errno
import os

from mountplan.errors import KernelError

from . import _libc
from .constants import UmountFlag, flag_names


def detach_fd(mnt_fd: int, shown: str = "") -> None:
    """``umount2("/proc/self/fd/N", MNT_DETACH)`` for a mount's own root fd.

    The magic link resolves to the very mount the fd holds (not to the top of
    the stack at its mount point), so a mount stacked on a path in between is
    never hit. It must be lazy: the fd itself pins the mount, so a plain unmount
    is always EBUSY (kernel.md). Used to take back a mount that landed somewhere
    it must not be, while its fsmount/open_tree fd is still open.
    """
    path = f"/proc/self/fd/{mnt_fd}".encode()
    while True:
        ret = _libc.umount2(path, int(UmountFlag.DETACH))
        if ret == 0:
            return
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise KernelError(err, "umount2", paths=[shown or os.fsdecode(path)], flags=flag_names(UmountFlag.DETACH, UmountFlag))
