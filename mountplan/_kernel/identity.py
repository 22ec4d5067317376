"""What a mount's root looks like to statx: evidence of identity where mount ids are reused.

Before Linux 6.8 the only mount id is a 32-bit one that the kernel hands out
again at once (kernel.md: a new mount at the same place got the same id in 3 of
5 tries), and a new tmpfs also gets the same anonymous device and root inode
number. Its root's birth time, to the nanosecond, differs: that is what tells
our tmpfs from a stranger's that reused every number.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from dataclasses import dataclass

from mountplan.errors import KernelError

from . import _libc
from .constants import AtFlag

_STATX_INO = 0x100
_STATX_BTIME = 0x800
_SIZE = 256
# struct statx: stx_mask u32 @0, stx_ino u64 @32, stx_btime {s64 sec, u32 nsec} @80,
# stx_dev_major u32 @136, stx_dev_minor u32 @140.


@dataclass(frozen=True, slots=True)
class RootEvidence:
    """Device, inode and (when the filesystem records one) birth time of a mount's root."""

    dev: tuple[int, int]
    ino: int
    btime_ns: int | None

    def to_json(self) -> list[int | None]:
        return [self.dev[0], self.dev[1], self.ino, self.btime_ns]

    @classmethod
    def from_json(cls, value: object) -> RootEvidence | None:
        if not isinstance(value, list) or len(value) != 4:
            return None
        major, minor, ino, btime = value
        if not all(type(v) is int for v in (major, minor, ino)) or not (btime is None or type(btime) is int):
            return None
        return cls((major, minor), ino, btime)


_NOFOLLOW = int(AtFlag.SYMLINK_NOFOLLOW)
_MASK = _STATX_INO | _STATX_BTIME
_U32, _U64, _BTIME, _DEV = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<qI"), struct.Struct("<II")
# One result buffer per thread (embedders apply plans from several threads), read
# in place: several calls per object made or removed.
_buffers = threading.local()


def root_evidence(dirfd: int, path: str = "", flags: AtFlag = AtFlag.EMPTY_PATH) -> RootEvidence:
    """statx of ``path`` in ``dirfd`` (the fd itself with the default flags), never following a final symlink."""
    buf: ctypes.Array[ctypes.c_char] | None = getattr(_buffers, "statx", None)
    if buf is None:
        buf = _buffers.statx = ctypes.create_string_buffer(_SIZE)
    ret = _libc.call(_libc.statx, dirfd, path.encode(), int(flags) | _NOFOLLOW, _MASK, buf)
    if ret < 0:
        raise KernelError(-ret, "statx", paths=[path] if path else [], flags="INO|BTIME")
    (mask,) = _U32.unpack_from(buf, 0)
    (ino,) = _U64.unpack_from(buf, 32)
    sec, nsec = _BTIME.unpack_from(buf, 80)
    major, minor = _DEV.unpack_from(buf, 136)
    btime = sec * 1_000_000_000 + nsec if mask & _STATX_BTIME else None
    return RootEvidence((major, minor), ino, btime)
