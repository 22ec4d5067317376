"""Detect once per process which mount-API syscalls the running kernel offers.

A probe passes deliberately invalid arguments: a present syscall answers EBADF,
EINVAL or EFAULT, an absent one ENOSYS. A seccomp filter that answers EPERM is
treated as absence, because a fallback (or a clear refusal) beats a half-applied
plan.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from dataclasses import dataclass

from mountplan.errors import FeatureMissingError

from . import _libc

#: syscall → first kernel version that has it.
SINCE: dict[str, str] = {
    "open_tree": "5.2",
    "move_mount": "5.2",
    "fsopen": "5.2",
    "fsconfig": "5.2",
    "fsmount": "5.2",
    "fspick": "5.2",
    "openat2": "5.6",
    "mount_setattr": "5.12",
    "statmount": "6.8",
    "listmount": "6.8",
    "open_tree_attr": "6.15",
}

#: What mountplan cannot work without.
REQUIRED = ("fsopen", "fsconfig", "fsmount", "open_tree", "move_mount", "openat2", "mount_setattr")


def _probe(name: str) -> bool:
    bad = ctypes.c_int(-1)
    null = ctypes.c_void_p(None)
    zero = ctypes.c_uint(0)
    args: tuple[object, ...]
    if name == "fsopen":
        args = (null, zero)
    elif name in {"fsmount"}:
        args = (bad, zero, zero)
    elif name == "fsconfig":
        args = (bad, zero, null, null, ctypes.c_int(0))
    elif name in {"fspick", "open_tree"}:
        args = (bad, null, zero)
    elif name == "move_mount":
        args = (bad, null, bad, null, zero)
    elif name == "openat2":
        args = (bad, null, null, ctypes.c_size_t(0))
    elif name in {"mount_setattr", "open_tree_attr"}:
        args = (bad, null, zero, null, ctypes.c_size_t(0))
    elif name == "statmount" or name == "listmount":
        args = (null, null, ctypes.c_size_t(0), zero)
    else:  # pragma: no cover - programming error
        raise KeyError(name)
    ret = _libc.syscall(name, *args)
    return ret >= 0 or -ret not in {errno.ENOSYS, errno.EPERM}


@dataclass(frozen=True, slots=True)
class Features:
    """Which syscalls this kernel has, plus facts derived from them."""

    present: frozenset[str]

    def has(self, name: str) -> bool:
        return name in self.present

    def require(self, *names: str) -> None:
        """Raise FeatureMissingError for the first missing syscall, before any change."""
        for name in names or REQUIRED:
            if name not in self.present:
                raise FeatureMissingError(name, SINCE[name])


@functools.cache
def detect() -> Features:
    """Probe the kernel once per process."""
    present = frozenset(name for name in SINCE if _probe(name))
    return Features(present=present)
