"""fanotify mount notifications: ``FAN_MNT_ATTACH``/``FAN_MNT_DETACH`` on a mount namespace (6.15+).

Values come from include/uapi/linux/fanotify.h (commit 0f46d81f2bce, "fanotify:
notify on mount attach and detach") and were checked on Linux 6.18 by
tests/watch/test_fanotify.py. The group must be made with ``FAN_REPORT_MNT``
(no other event type can then be reported) and the mark added with
``FAN_MARK_MNTNS`` on an nsfs fd such as ``/proc/self/ns/mnt``. Each event is a
24-byte ``fanotify_event_metadata`` (``fd`` is ``FAN_NOFD``) followed by one
``fanotify_event_info_mnt`` record: a 4-byte header (``info_type`` 7, pad,
``len`` 16), 4 bytes of alignment padding, and the unique 64-bit mount id that
statmount(2) takes. A move is
reported as ``ATTACH|DETACH``.

What the kernel does not report (seen on 6.18): a remount (``mount -o
remount,ro``), ``mount_setattr`` and propagation changes — no mount is attached
or detached — so a watcher needs the mountinfo poll for those (see
:mod:`mountplan.watch`). ``FAN_MARK_MNTNS`` needs ``CAP_SYS_ADMIN`` in the user
namespace that owns the mount namespace, which an unprivileged user has in a
namespace of its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno
import os
import struct
from dataclasses import dataclass

from mountplan.errors import KernelError

from .constants import flag_names
from .fd import Fd

__all__ = [
    "FANOTIFY_METADATA_VERSION",
    "FAN_EVENT_INFO_TYPE_MNT",
    "FanotifyEvent",
    "FanotifyInitFlag",
    "FanotifyMarkFlag",
    "MountEvent",
    "fanotify_init",
    "fanotify_mark",
    "open_mount_namespace_watch",
    "parse_mount_events",
    "read_mount_events",
]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# glibc wrappers: the syscall numbers differ per architecture (x86_64: 300/301),
# and the 64-bit mask is split over two registers on 32-bit ABIs.
_fanotify_init = _libc.fanotify_init
_fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_fanotify_init.restype = ctypes.c_int
_fanotify_mark = _libc.fanotify_mark
_fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_fanotify_mark.restype = ctypes.c_int

FANOTIFY_METADATA_VERSION = 3
#: Info record type of a mount event. 6 in the first posted patches; 7 once
#: FAN_EVENT_INFO_TYPE_RANGE (pre-content hooks) took 6 in the same release.
FAN_EVENT_INFO_TYPE_MNT = 7
_FAN_NOFD = -1

#: struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid.
_METADATA = struct.Struct("<IBBHQii")
#: struct fanotify_event_info_header: info_type, pad, len.
_INFO_HEADER = struct.Struct("<BBH")
#: struct fanotify_event_info_mnt: header, then mnt_id at its natural 8-byte
#: alignment (offset 8, not 4: the C struct has 4 bytes of padding; len is 16).
_INFO_MNT = struct.Struct("<BBH4xQ")


class FanotifyInitFlag(enum.IntFlag):
    """``fanotify_init(2)`` flags used here (``FAN_CLASS_NOTIF`` is 0)."""

    CLOEXEC = 0x1
    NONBLOCK = 0x2
    REPORT_MNT = 0x4000


class FanotifyMarkFlag(enum.IntFlag):
    """``fanotify_mark(2)`` flags used here; ``MNTNS`` is the object type 0x110 (MOUNT|FILESYSTEM bits)."""

    ADD = 0x1
    REMOVE = 0x2
    MNTNS = 0x110


class FanotifyEvent(enum.IntFlag):
    """Event mask bits a mount-namespace watch can deliver."""

    Q_OVERFLOW = 0x4000
    MNT_ATTACH = 0x01000000
    MNT_DETACH = 0x02000000


@dataclass(frozen=True, slots=True)
class MountEvent:
    """One fanotify record: what happened, and to which mount (None for a queue overflow)."""

    mask: FanotifyEvent
    mnt_id: int | None

    @property
    def is_overflow(self) -> bool:
        """The kernel dropped events: the watcher must assume anything changed."""
        return bool(self.mask & FanotifyEvent.Q_OVERFLOW)

    def to_json(self) -> dict[str, object]:
        return {"mask": flag_names(self.mask, FanotifyEvent), "mnt_id": self.mnt_id}


def fanotify_init(flags: FanotifyInitFlag, event_f_flags: int = os.O_RDONLY) -> Fd:
    """``fanotify_init(2)``; an owned fd. EINVAL for ``REPORT_MNT`` means a kernel before 6.15."""
    while True:
        fd = int(_fanotify_init(ctypes.c_uint(int(flags)), ctypes.c_uint(event_f_flags)))
        if fd >= 0:
            return Fd(fd, "fanotify")
        err = ctypes.get_errno()
        if err != errno.EINTR:
            hint = "this kernel has no FAN_REPORT_MNT (added in 6.15)" if err == errno.EINVAL else ""
            raise KernelError(err, "fanotify_init", flags=flag_names(flags, FanotifyInitFlag), hint=hint)


def fanotify_mark(
    fanotify_fd: int, flags: FanotifyMarkFlag, mask: FanotifyEvent, dirfd: int, path: str | None = None
) -> None:
    """``fanotify_mark(2)``; with ``MNTNS``, ``dirfd`` is an nsfs fd of the mount namespace to watch."""
    raw_path = None if path is None else os.fsencode(path)
    while True:
        ret = int(
            _fanotify_mark(
                ctypes.c_int(fanotify_fd), ctypes.c_uint(int(flags)), ctypes.c_uint64(int(mask)),
                ctypes.c_int(dirfd), raw_path,
            )
        )
        if ret == 0:
            return
        err = ctypes.get_errno()
        if err != errno.EINTR:
            hint = ""
            if err == errno.EPERM:
                hint = "watching a mount namespace needs CAP_SYS_ADMIN in the user namespace that owns it"
            raise KernelError(
                err, "fanotify_mark", paths=[path] if path else [],
                flags=f"{flag_names(flags, FanotifyMarkFlag)} mask={flag_names(mask, FanotifyEvent)}", hint=hint,
            )


def open_mount_namespace_watch(namespace: str = "/proc/self/ns/mnt") -> Fd:
    """A non-blocking fanotify fd that reports every mount attached to or detached from ``namespace``.

    Raises :class:`KernelError` when the kernel (before 6.15: EINVAL), the
    privilege (EPERM) or the limits (EMFILE: ``fs.fanotify.max_user_groups``) say no.
    """
    group = fanotify_init(FanotifyInitFlag.REPORT_MNT | FanotifyInitFlag.CLOEXEC | FanotifyInitFlag.NONBLOCK)
    try:
        ns_fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        group.close()
        raise KernelError(exc.errno or errno.EIO, "open", paths=[namespace]) from exc
    try:
        fanotify_mark(
            group.fileno(), FanotifyMarkFlag.ADD | FanotifyMarkFlag.MNTNS,
            FanotifyEvent.MNT_ATTACH | FanotifyEvent.MNT_DETACH, ns_fd, None,
        )
    except KernelError:
        group.close()
        raise
    finally:
        os.close(ns_fd)
    return group


def parse_mount_events(buf: bytes) -> list[MountEvent]:
    """Decode a read(2) of a ``FAN_REPORT_MNT`` group; malformed records raise ValueError.

    Walks records the way ``FAN_EVENT_OK``/``FAN_EVENT_NEXT`` do, and info
    records by their own ``len``, so a record type added later is skipped, not
    misread.
    """
    events: list[MountEvent] = []
    offset = 0
    while offset < len(buf):
        if len(buf) - offset < _METADATA.size:
            raise ValueError(f"fanotify: truncated event header at offset {offset}")
        event_len, vers, _reserved, metadata_len, mask, fd, _pid = _METADATA.unpack_from(buf, offset)
        if vers != FANOTIFY_METADATA_VERSION:
            raise ValueError(f"fanotify: metadata version {vers}, expected {FANOTIFY_METADATA_VERSION}")
        if event_len < _METADATA.size or event_len > len(buf) - offset or metadata_len < _METADATA.size:
            raise ValueError(f"fanotify: bad event_len {event_len} at offset {offset}")
        if fd >= 0:  # never for REPORT_MNT; close rather than leak if it ever happens
            os.close(fd)
        mnt_id: int | None = None
        info = offset + metadata_len
        end = offset + event_len
        while info + _INFO_HEADER.size <= end:
            info_type, _pad, info_len = _INFO_HEADER.unpack_from(buf, info)
            if info_len < _INFO_HEADER.size or info + info_len > end:
                raise ValueError(f"fanotify: bad info record length {info_len} at offset {info}")
            if info_type == FAN_EVENT_INFO_TYPE_MNT and info_len >= _INFO_MNT.size:
                mnt_id = _INFO_MNT.unpack_from(buf, info)[3]
            info += info_len
        events.append(MountEvent(FanotifyEvent(mask), mnt_id))
        offset = end
    return events


def read_mount_events(fanotify_fd: int, bufsize: int = 1 << 16) -> list[MountEvent]:
    """Drain every queued event of a non-blocking group; an empty list when none is queued."""
    events: list[MountEvent] = []
    while True:
        try:
            buf = os.read(fanotify_fd, bufsize)
        except BlockingIOError:
            return events
        except InterruptedError:  # pragma: no cover - Python retries EINTR itself (PEP 475)
            continue
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, "read", paths=["fanotify"]) from exc
        if not buf:
            return events
        events.extend(parse_mount_events(buf))
