"""What every syscall wrapper shares: path encoding, and a failed call turned into a KernelError."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence

from mountplan.errors import KernelError

from .constants import MountAttr

__all__ = ["_NO_ATTRS", "_path", "_raise", "read_fs_messages"]

#: Default for attribute arguments (an IntFlag instance, made once).
_NO_ATTRS = MountAttr(0)

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
