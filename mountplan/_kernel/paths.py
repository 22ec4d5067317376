"""Path calls beneath a directory fd: openat2 with a resolve policy, mkdirat, and statx's mount ids.

Test seam: when ``MOUNTPLAN_KERNEL_PROFILE`` (read once, at import) names an
emulated kernel older than 6.8 (see :mod:`mountplan._kernel.emulation` and
``scripts/emulate-kernel``), :func:`statx_mount_ids` asks only for the 32-bit
``STATX_MNT_ID`` and reports ``unique=False``, exactly as a 5.12-6.7 kernel does.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct
import threading

from . import _libc
from . import emulation as _emulation
from ._wrapper import _path, _raise
from .constants import AtFlag, OpenFlag, Resolve, StatxMask, flag_names
from .fd import Fd

__all__ = ["MountIds", "mkdirat", "openat2", "openat2_if_exists", "statx_mount_ids", "statx_reports_unique_ids"]


@functools.lru_cache(maxsize=64)
def _open_how(flags: int, mode: int, resolve: int) -> bytes:
    # The kernel only reads struct open_how: one immutable copy per combination
    # (a handful in practice) serves every call.
    return struct.pack("<QQQ", flags, mode, resolve)


_OPEN_HOW_SIZE = ctypes.c_size_t(struct.calcsize("<QQQ"))


def _openat2(
    dirfd: int, path: str, flags: OpenFlag, resolve: Resolve, mode: int, shown: str, *, missing_ok: bool
) -> Fd | None:
    how = _open_how(int(flags), mode, int(resolve))
    ret = _libc.syscall("openat2", ctypes.c_int(dirfd), ctypes.c_char_p(_path(path)), ctypes.c_char_p(how), _OPEN_HOW_SIZE)
    if ret == -errno.ENOENT and missing_ok:
        return None
    if ret < 0:
        _raise(
            -ret,
            "openat2",
            [shown or path],
            f"{flag_names(flags, OpenFlag)} resolve={flag_names(resolve, Resolve)}",
        )
    return Fd(ret, f"openat2:{shown or path}")


def openat2(
    dirfd: int,
    path: str,
    flags: OpenFlag,
    resolve: Resolve,
    mode: int = 0,
    shown: str = "",
) -> Fd:
    """``openat2`` with a resolve policy; the way every target is pinned beneath a root."""
    fd = _openat2(dirfd, path, flags, resolve, mode, shown, missing_ok=False)
    assert fd is not None
    return fd


def openat2_if_exists(dirfd: int, path: str, flags: OpenFlag, resolve: Resolve, shown: str = "") -> Fd | None:
    """Like :func:`openat2`, but None when ``path`` does not exist (ENOENT).

    The existence probe before creating a mountpoint: for a fresh apply the
    answer is nearly always "no", and an exception per mount is a real cost.
    """
    return _openat2(dirfd, path, flags, resolve, 0, shown, missing_ok=True)


def mkdirat(dirfd: int, name: str, mode: int, shown: str = "") -> None:
    """mkdir relative to a directory fd; ``name`` must be one path component."""
    try:
        os.mkdir(name, mode, dir_fd=dirfd)
    except OSError as exc:
        _raise(exc.errno or errno.EIO, "mkdirat", [shown or name], oct(mode))


class MountIds:
    """The ids ``statx`` reports for the mount containing an object."""

    __slots__ = ("mnt_id", "unique")

    def __init__(self, mnt_id: int, unique: bool) -> None:
        self.mnt_id: int = mnt_id
        self.unique: bool = unique

    def __repr__(self) -> str:
        return f"MountIds(mnt_id={self.mnt_id}, unique={self.unique})"


_STATX_SIZE = 256
_STX_MASK_OFFSET = 0
_STX_MNT_ID_OFFSET = 144
_MASK_UNIQUE, _MASK_OLD = int(StatxMask.MNT_ID_UNIQUE), int(StatxMask.MNT_ID)
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
# One statx result buffer per thread (embedders apply plans from several threads):
# the engine asks for mount ids several times per mount.
_buffers = threading.local()


def _statx_buffer() -> ctypes.Array[ctypes.c_char]:
    buf: ctypes.Array[ctypes.c_char] | None = getattr(_buffers, "statx", None)
    if buf is None:
        buf = _buffers.statx = ctypes.create_string_buffer(_STATX_SIZE)
    return buf

# Test seam: a profile older than 6.8 in MOUNTPLAN_KERNEL_PROFILE (scripts/emulate-kernel)
# makes statx_mount_ids ask for the 32-bit id only, exactly what a 5.12-6.7 kernel
# answers. Read once at import; a seccomp errno filter cannot fake a missing mask bit.
_ACTIVE_PROFILE = _emulation.active_profile()
_HIDE_UNIQUE_MOUNT_ID = _ACTIVE_PROFILE is not None and not _ACTIVE_PROFILE.has_unique_mount_ids


@functools.cache
def _unique_ids_usable() -> bool:
    """Unique ids only help where the live table has them too (statmount + listmount).

    A container that blocks statmount on a 6.8+ kernel still answers statx with
    the unique id, but its table comes from mountinfo, which has only the 32-bit
    ids: one id space for the whole process keeps every lookup consistent.
    """
    from .features import detect  # features probes through this module's siblings only

    features = detect()
    return features.has_unique_mount_ids and features.has("statmount") and features.has("listmount")


def statx_reports_unique_ids() -> bool:
    """Whether statx answers with ``STATX_MNT_ID_UNIQUE`` here (6.8+; the test seam can hide it)."""
    if _HIDE_UNIQUE_MOUNT_ID:
        return False
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    ret = _libc.call(_libc.statx, -100, _path("/"), 0, int(StatxMask.MNT_ID_UNIQUE), buf)
    return ret >= 0 and bool(struct.unpack_from("<I", buf.raw, _STX_MASK_OFFSET)[0] & StatxMask.MNT_ID_UNIQUE)


def statx_mount_ids(dirfd: int, path: str = "", flags: AtFlag = AtFlag.EMPTY_PATH) -> MountIds:
    """Mount id of the object: the unique 64-bit one (6.8+) or the old reusable one.

    Under an emulated kernel profile older than 6.8 (``MOUNTPLAN_KERNEL_PROFILE``,
    see :mod:`mountplan._kernel.emulation`) only the 32-bit id is requested and
    ``unique`` is False, as on such a kernel; likewise where statmount is unusable
    (the live table then has 32-bit ids only).
    """
    buf = _statx_buffer()
    if _unique_ids_usable():
        ret = _libc.call(_libc.statx, dirfd, _path(path), int(flags), _MASK_UNIQUE, buf)
        if ret < 0:
            _raise(-ret, "statx", [path] if path else [], flag_names(StatxMask.MNT_ID_UNIQUE | StatxMask.MNT_ID, StatxMask))
        # Read in place: buf.raw would copy all 256 bytes for each field.
        (got,) = _U32.unpack_from(buf, _STX_MASK_OFFSET)
        (mnt_id,) = _U64.unpack_from(buf, _STX_MNT_ID_OFFSET)
        if got & _MASK_UNIQUE:
            return MountIds(mnt_id, True)
    # Older kernels ignore the unique bit; ask for the 32-bit id explicitly.
    ret = _libc.call(_libc.statx, dirfd, _path(path), int(flags), _MASK_OLD, buf)
    if ret < 0:
        _raise(-ret, "statx", [path] if path else [], "MNT_ID")
    (mnt_id,) = _U64.unpack_from(buf, _STX_MNT_ID_OFFSET)
    return MountIds(mnt_id, False)

