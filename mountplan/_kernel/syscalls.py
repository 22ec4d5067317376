"""Typed wrappers for the new mount API, named after the syscalls they issue.

Every wrapper checks its return value, retries EINTR, and raises
:class:`~mountplan.errors.KernelError` naming the call, its paths, its flags and
the errno. Calls on a filesystem context (fsconfig on an fsopen/fspick fd) also
drain the context's message log so the error carries the kernel's own words,
e.g. ``tmpfs: Bad value for 'size'``.

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
import sys
import threading
from collections.abc import Sequence

from mountplan.errors import KernelError

from . import _libc
from . import emulation as _emulation
from .constants import (
    MOUNT_ATTR_ATIME_MASK,
    AtFlag,
    FsconfigCmd,
    FsmountFlag,
    FsopenFlag,
    FspickFlag,
    MountAttr,
    MoveMountFlag,
    OpenFlag,
    OpenTreeFlag,
    Propagation,
    Resolve,
    StatxMask,
    UmountFlag,
    flag_names,
)
from .fd import Fd

__all__ = [
    "MountIds",
    "fsconfig_create",
    "fsconfig_create_excl",
    "fsconfig_reconfigure",
    "fsconfig_set_binary",
    "fsconfig_set_fd",
    "fsconfig_set_flag",
    "fsconfig_set_path",
    "fsconfig_set_path_empty",
    "fsconfig_set_string",
    "fsmount",
    "fsopen",
    "fspick",
    "mkdirat",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "openat2",
    "read_fs_messages",
    "statx_mount_ids",
    "umount_at",
]

# Hints for errnos whose cause is well known but never spelled out by the kernel.
_HINTS: dict[tuple[str, int], str] = {
    ("move_mount", errno.EINVAL): (
        "the mount being moved, or the target's parent mount, has shared propagation "
        "(systemd makes / shared); make it private or slave first"
    ),
    ("umount2", errno.EBUSY): "something still uses the mount: an open fd, a cwd or a child mount",
    ("umount2", errno.EINVAL): "the path is not a mount point (or it is locked in this user namespace)",
    ("fsopen", errno.ENODEV): "the kernel does not know this filesystem type (see /proc/filesystems)",
    ("fsopen", errno.EPERM): "mounting this filesystem type needs privilege in the owning namespace",
    ("fsconfig", errno.EPERM): (
        "not allowed in this user namespace: proc needs a new pid namespace, sysfs a new "
        "net namespace, mqueue an ipc namespace"
    ),
    ("mount_setattr", errno.EPERM): (
        "the mount is locked: it was inherited from a more privileged namespace, so its "
        "ro/nosuid/nodev/noexec/atime settings cannot be relaxed here"
    ),
    ("openat2", errno.EXDEV): "the path leaves its root (RESOLVE_BENEATH refused it)",
    ("openat2", errno.ELOOP): "the path contains a symlink, which is refused inside a root",
}


def _raise(err: int, op: str, paths: Sequence[str] = (), flags: str = "", ctx: int | None = None) -> None:
    messages = read_fs_messages(ctx) if ctx is not None else []
    raise KernelError(
        err, op, paths=paths, flags=flags, kernel_messages=messages, hint=_HINTS.get((op, err), "")
    )


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _path(p: str) -> bytes:
    # os.fsencode for a str, without its per-call type dispatch and lookups
    # (several calls per mount: every path argument goes through here).
    return p.encode(_FS_ENCODING, _FS_ERRORS)


def read_fs_messages(fs_fd: int) -> list[str]:
    """Drain the message log of a filesystem context (fsopen/fspick fd).

    Each read(2) returns one message such as ``e tmpfs: Bad value for 'size'``;
    ENODATA means the log is empty. Warnings keep a ``warning:`` prefix.
    """
    out: list[str] = []
    for _ in range(64):  # the kernel keeps at most 8; bound the loop anyway
        try:
            raw = os.read(fs_fd, 4096)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            break
        if not raw:
            break
        text = raw.decode("utf-8", "replace").rstrip("\n")
        level, _, body = text.partition(" ")
        if level == "e":
            out.append(body)
        elif level == "w":
            out.append(f"warning: {body}")
        elif level == "i":
            out.append(f"info: {body}")
        else:
            out.append(text)
    return out


def fsopen(fs_type: str, flags: FsopenFlag = FsopenFlag.CLOEXEC) -> Fd:
    """Open a new filesystem context for ``fs_type``."""
    ret = _libc.syscall("fsopen", ctypes.c_char_p(fs_type.encode()), ctypes.c_uint(flags))
    if ret < 0:
        _raise(-ret, "fsopen", [fs_type], flag_names(flags, FsopenFlag))
    return Fd(ret, f"fsopen:{fs_type}")


def fspick(dirfd: int, path: str, flags: FspickFlag = FspickFlag.CLOEXEC) -> Fd:
    """Open the filesystem context of an existing mount for reconfiguration."""
    ret = _libc.syscall(
        "fspick", ctypes.c_int(dirfd), ctypes.c_char_p(_path(path)), ctypes.c_uint(flags)
    )
    if ret < 0:
        _raise(-ret, "fspick", [path], flag_names(flags, FspickFlag))
    return Fd(ret, f"fspick:{path}")


def _fsconfig(
    fs_fd: int, cmd: FsconfigCmd, key: str | None, value: bytes | None, aux: int, shown: str
) -> None:
    ret = _libc.syscall(
        "fsconfig",
        ctypes.c_int(fs_fd),
        ctypes.c_uint(cmd),
        ctypes.c_char_p(key.encode() if key is not None else None),
        ctypes.c_char_p(value),
        ctypes.c_int(aux),
    )
    if ret < 0:
        _raise(-ret, "fsconfig", [shown] if shown else [], cmd.name, ctx=fs_fd)


def fsconfig_set_flag(fs_fd: int, key: str) -> None:
    """``FSCONFIG_SET_FLAG``: a boolean option such as ``ro`` or ``noexec``."""
    _fsconfig(fs_fd, FsconfigCmd.SET_FLAG, key, None, 0, key)


def fsconfig_set_string(fs_fd: int, key: str, value: str) -> None:
    """``FSCONFIG_SET_STRING``: ``key=value``."""
    _fsconfig(fs_fd, FsconfigCmd.SET_STRING, key, value.encode(), 0, f"{key}={value}")


def fsconfig_set_binary(fs_fd: int, key: str, value: bytes) -> None:
    """``FSCONFIG_SET_BINARY``: an opaque blob of ``len(value)`` bytes."""
    ret = _libc.syscall(
        "fsconfig",
        ctypes.c_int(fs_fd),
        ctypes.c_uint(FsconfigCmd.SET_BINARY),
        ctypes.c_char_p(key.encode()),
        ctypes.c_char_p(value),
        ctypes.c_int(len(value)),
    )
    if ret < 0:
        _raise(-ret, "fsconfig", [key], FsconfigCmd.SET_BINARY.name, ctx=fs_fd)


def fsconfig_set_path(fs_fd: int, key: str, path: str, dirfd: int = -100) -> None:
    """``FSCONFIG_SET_PATH``: a path looked up relative to ``dirfd`` (AT_FDCWD = -100)."""
    _fsconfig(fs_fd, FsconfigCmd.SET_PATH, key, _path(path), dirfd, f"{key}={path}")


def fsconfig_set_path_empty(fs_fd: int, key: str, dirfd: int) -> None:
    """``FSCONFIG_SET_PATH_EMPTY``: the object ``dirfd`` itself."""
    _fsconfig(fs_fd, FsconfigCmd.SET_PATH_EMPTY, key, b"", dirfd, f"{key}=<fd {dirfd}>")


def fsconfig_set_fd(fs_fd: int, key: str, value_fd: int) -> None:
    """``FSCONFIG_SET_FD``: an open fd, e.g. an overlay layer (no path parsing at all)."""
    _fsconfig(fs_fd, FsconfigCmd.SET_FD, key, None, value_fd, f"{key}=<fd {value_fd}>")


def fsconfig_create(fs_fd: int) -> None:
    """``FSCONFIG_CMD_CREATE``: create (or reuse) the superblock."""
    _fsconfig(fs_fd, FsconfigCmd.CMD_CREATE, None, None, 0, "")


def fsconfig_create_excl(fs_fd: int) -> None:
    """``FSCONFIG_CMD_CREATE_EXCL`` (6.6): create a new superblock, never reuse one."""
    _fsconfig(fs_fd, FsconfigCmd.CMD_CREATE_EXCL, None, None, 0, "")


def fsconfig_reconfigure(fs_fd: int) -> None:
    """``FSCONFIG_CMD_RECONFIGURE``: apply changed options to a live superblock."""
    _fsconfig(fs_fd, FsconfigCmd.CMD_RECONFIGURE, None, None, 0, "")


#: Default for attribute arguments (an IntFlag instance, made once).
_NO_ATTRS = MountAttr(0)


def fsmount(fs_fd: int, attrs: MountAttr = _NO_ATTRS, flags: FsmountFlag = FsmountFlag.CLOEXEC) -> Fd:
    """Turn a created context into a detached mount; closing the fd drops the mount."""
    ret = _libc.syscall("fsmount", ctypes.c_int(fs_fd), ctypes.c_uint(flags), ctypes.c_uint(attrs))
    if ret < 0:
        _raise(-ret, "fsmount", [], f"attrs={flag_names(attrs, MountAttr)}", ctx=fs_fd)
    return Fd(ret, "fsmount")


def open_tree(dirfd: int, path: str, flags: OpenTreeFlag) -> Fd:
    """Open (or with CLONE, copy as a detached tree) the mount at ``path``."""
    ret = _libc.syscall(
        "open_tree", ctypes.c_int(dirfd), ctypes.c_char_p(_path(path)), ctypes.c_uint(flags)
    )
    if ret < 0:
        _raise(-ret, "open_tree", [path], flag_names(flags, OpenTreeFlag))
    return Fd(ret, f"open_tree:{path}")


def _mount_attr(
    attr_set: MountAttr, attr_clr: MountAttr, propagation: Propagation | None, userns_fd: int = 0
) -> ctypes.Array[ctypes.c_char]:
    # Setting any atime mode needs the whole atime field cleared first (kernel.md).
    if int(attr_set) & MOUNT_ATTR_ATIME_MASK or int(attr_clr) & MOUNT_ATTR_ATIME_MASK:
        attr_clr = MountAttr(int(attr_clr) | MOUNT_ATTR_ATIME_MASK)
    raw = struct.pack("<QQQQ", int(attr_set), int(attr_clr), int(propagation or 0), userns_fd)
    return ctypes.create_string_buffer(raw, len(raw))


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
    buf = _mount_attr(attr_set, attr_clr, propagation)
    ret = _libc.syscall(
        "open_tree_attr",
        ctypes.c_int(dirfd),
        ctypes.c_char_p(_path(path)),
        ctypes.c_uint(flags),
        buf,
        ctypes.c_size_t(len(buf)),
    )
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
    buf = _mount_attr(attr_set, attr_clr, propagation, userns_fd)
    ret = _libc.syscall(
        "mount_setattr",
        ctypes.c_int(dirfd),
        ctypes.c_char_p(_path(path)),
        ctypes.c_uint(flags),
        buf,
        ctypes.c_size_t(len(buf)),
    )
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
    flags = UmountFlag(flags | UmountFlag.NOFOLLOW)
    ret = _libc.call(_libc.umount2, _path(path), int(flags))
    if ret < 0:
        _raise(-ret, "umount2", [shown or name], flag_names(flags, UmountFlag))
