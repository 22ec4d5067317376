"""Filesystem-context calls: fsopen, fspick, fsconfig and fsmount, which make a detached mount."""

from __future__ import annotations

import ctypes

from . import _libc
from ._wrapper import _NO_ATTRS, _path, _raise
from .constants import FsconfigCmd, FsmountFlag, FsopenFlag, FspickFlag, MountAttr, flag_names
from .fd import Fd

__all__ = [
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
]


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


def fsmount(fs_fd: int, attrs: MountAttr = _NO_ATTRS, flags: FsmountFlag = FsmountFlag.CLOEXEC) -> Fd:
    """Turn a created context into a detached mount; closing the fd drops the mount."""
    ret = _libc.syscall("fsmount", ctypes.c_int(fs_fd), ctypes.c_uint(flags), ctypes.c_uint(attrs))
    if ret < 0:
        _raise(-ret, "fsmount", [], f"attrs={flag_names(attrs, MountAttr)}", ctx=fs_fd)
    return Fd(ret, "fsmount")
