"""Enter fresh private namespaces: the one implementation behind ``run --unshare`` and the test sandbox."""

from __future__ import annotations

import ctypes
import enum
import os

from mountplan.errors import KernelError

from . import _libc
from .constants import AtFlag, Propagation, flag_names
from .syscalls import mount_setattr

_AT_FDCWD = -100


class CloneFlag(enum.IntFlag):
    """``CLONE_NEW*`` flags for unshare(2)."""

    NEWNS = 0x00020000
    NEWCGROUP = 0x02000000
    NEWIPC = 0x08000000
    NEWUSER = 0x10000000
    NEWPID = 0x20000000
    NEWNET = 0x40000000


def unshare(flags: CloneFlag) -> None:
    """unshare(2); a new pid namespace takes effect for children only."""
    if _libc.unshare(int(flags)) != 0:
        raise KernelError(ctypes.get_errno(), "unshare", flags=flag_names(flags, CloneFlag))


def enter_private_namespaces(*, as_root: bool) -> None:
    """Enter new mount and pid namespaces and make every mount private.

    ``as_root`` False also makes a user namespace mapping us to root, plus net and
    ipc namespaces it owns: the kernel lets a user namespace's owner mount sysfs
    and mqueue only for namespaces that user namespace owns (proc likewise needs
    the pid namespace). Nothing mounted afterwards propagates back out.
    """
    if as_root:
        unshare(CloneFlag.NEWNS | CloneFlag.NEWPID)
    else:
        uid, gid = os.geteuid(), os.getegid()
        unshare(CloneFlag.NEWUSER | CloneFlag.NEWNS | CloneFlag.NEWPID | CloneFlag.NEWNET | CloneFlag.NEWIPC)
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    mount_setattr(_AT_FDCWD, "/", AtFlag.RECURSIVE, propagation=Propagation.PRIVATE)
