"""ctypes access to libc: the raw ``syscall(2)`` entry and a few glibc wrappers.

``libc.syscall`` is variadic: every argument must be wrapped in an explicit
ctypes type or 64-bit values are silently truncated (kernel.md, "ctypes pitfall").
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any


def _open_libc() -> ctypes.CDLL:
    # dlopen(NULL): the symbols the interpreter is already linked with, libc's
    # among them. ctypes.util.find_library would import subprocess and run
    # ldconfig, several ms of every mountplan process; it stays the fallback
    # for an interpreter linked without libc's symbols exported.
    here = ctypes.CDLL(None, use_errno=True)
    if hasattr(here, "syscall") and hasattr(here, "statx"):
        return here
    from ctypes.util import find_library

    return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)


_libc = _open_libc()

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

umount2 = _libc.umount2
umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
umount2.restype = ctypes.c_int

fchownat = _libc.fchownat
fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
fchownat.restype = ctypes.c_int

statx = _libc.statx
statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
statx.restype = ctypes.c_int

mount = _libc.mount
mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
mount.restype = ctypes.c_int

unshare = _libc.unshare
unshare.argtypes = [ctypes.c_int]
unshare.restype = ctypes.c_int

# Numbers from 424 up are shared by every architecture except alpha, mips, ia64.
_GENERIC = {
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "openat2": 437,
    "mount_setattr": 442,
    "fchmodat2": 452,
    "statmount": 457,
    "listmount": 458,
    "open_tree_attr": 467,
}

if os.uname().machine in {"alpha", "mips", "mips64", "ia64"}:  # pragma: no cover
    raise ImportError(f"mountplan: syscall numbers for {os.uname().machine} are not known")

SYSCALL_NUMBERS: dict[str, int] = dict(_GENERIC)
# Each number boxed once: ctypes reads a c_long argument without copying it, and
# the engine makes a few hundred of these calls per apply+destroy.
_BOXED: dict[str, ctypes.c_long] = {name: ctypes.c_long(nr) for name, nr in SYSCALL_NUMBERS.items()}


def syscall(name: str, *args: Any) -> int:
    """Issue syscall ``name``; return its result or ``-errno``. Retries EINTR."""
    nr = _BOXED[name]
    while True:
        ret: int = _syscall(nr, *args)  # restype c_long: already an int
        if ret != -1:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            return -err


def call(func: Callable[..., int], *args: Any) -> int:
    """Call a libc function; return its result or ``-errno``. Retries EINTR."""
    while True:
        ret: int = func(*args)  # every wrapper here has an integer restype
        if ret != -1:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            return -err
