"""Filesystem objects made beneath a root: symlinkat, an exclusive file create, fchmod, fchown, unlinkat.

Every call takes a directory fd (already resolved beneath its root) and one path
component, so nothing here ever walks a path the root's contents could redirect.
"""

from __future__ import annotations

import ctypes
import errno
import os

from mountplan.errors import KernelError

from . import _libc
from .constants import AtFlag
from .fd import Fd

__all__ = ["create_file", "fchmod", "fchown", "open_directory", "symlinkat", "unlinkat"]

def _fail(exc: OSError, op: str, shown: str, flags: str = "") -> KernelError:
    err = exc.errno or errno.EIO
    hint = ""
    if err == errno.EEXIST:
        hint = "something is already at this path; mountplan only creates what is absent"
    elif op == "fchown" and err == errno.EINVAL:
        hint = "the uid or gid is not mapped in this user namespace"
    return KernelError(err, op, paths=[shown], flags=flags, hint=hint)


def symlinkat(target: str, dirfd: int, name: str, shown: str = "") -> None:
    """Create symlink ``name`` in ``dirfd`` pointing at ``target`` (the text is stored, never followed)."""
    try:
        os.symlink(target, name, dir_fd=dirfd)
    except OSError as exc:
        raise _fail(exc, "symlinkat", shown or name) from None


def create_file(dirfd: int, name: str, mode: int, shown: str = "") -> Fd:
    """``openat(O_CREAT|O_EXCL|O_NOFOLLOW)``: a new empty regular file, never an existing one or a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, mode & 0o7777, dir_fd=dirfd)
    except OSError as exc:
        raise _fail(exc, "openat", shown or name, "O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW") from None
    return Fd(fd, f"file:{shown or name}")


def open_directory(dirfd: int, name: str, shown: str = "") -> Fd:
    """``openat(O_RDONLY|O_DIRECTORY|O_NOFOLLOW)`` of a directory just made: an fd that fchmod/fchown accept."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dirfd)
    except OSError as exc:
        raise _fail(exc, "openat", shown or name, "O_RDONLY|O_DIRECTORY|O_NOFOLLOW") from None
    return Fd(fd, f"dir:{shown or name}")


def fchmod(fd: int, mode: int, shown: str = "") -> None:
    """Set exact permission bits (mkdirat and openat are subject to the umask) on any fd, O_PATH too.

    An O_PATH fd (an object opened without opening *it*: no FIFO or device side
    effects, no read permission needed) takes fchmodat2(AT_EMPTY_PATH) (6.6), or
    chmod of its /proc/self/fd magic link on older kernels.
    """
    mode &= 0o7777
    try:
        os.fchmod(fd, mode)
        return
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise _fail(exc, "fchmod", shown, oct(mode)) from None
    ret = _libc.syscall("fchmodat2", ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_uint(mode), ctypes.c_int(AtFlag.EMPTY_PATH))
    if ret == 0:
        return
    if ret != -errno.ENOSYS:
        raise KernelError(-ret, "fchmodat2", paths=[shown], flags=f"AT_EMPTY_PATH {oct(mode)}")
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    except OSError as exc:
        raise _fail(exc, "chmod", shown or f"/proc/self/fd/{fd}", oct(mode)) from None


def fchown(fd: int, uid: int, gid: int, shown: str = "") -> None:
    """Set the owner of any fd, O_PATH too (``fchownat(fd, "", AT_EMPTY_PATH)``); -1 leaves that id alone."""
    ret = _libc.call(_libc.fchownat, fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, int(AtFlag.EMPTY_PATH | AtFlag.SYMLINK_NOFOLLOW))
    if ret < 0:
        err = -ret
        hint = "the uid or gid is not mapped in this user namespace" if err == errno.EINVAL else ""
        raise KernelError(err, "fchownat", paths=[shown], flags=f"AT_EMPTY_PATH uid={uid} gid={gid}", hint=hint)


def unlinkat(dirfd: int, name: str, *, directory: bool = False, shown: str = "") -> None:
    """Remove ``name`` from ``dirfd`` (``AT_REMOVEDIR`` for a directory, which must be empty)."""
    try:
        if directory:
            os.rmdir(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)
    except OSError as exc:
        raise _fail(exc, "unlinkat", shown or name, "AT_REMOVEDIR" if directory else "") from None
