"""Typed wrappers for the new mount API, named after the syscalls they issue.

Every wrapper checks its return value, retries EINTR, and raises
:class:`~mountplan.errors.KernelError` naming the call, its paths, its flags and
the errno. Calls on a filesystem context (fsconfig on an fsopen/fspick fd) also
drain the context's message log so the error carries the kernel's own words,
e.g. ``tmpfs: Bad value for 'size'``.

The wrappers live by family: :mod:`.fscontext` (fsopen, fspick, fsconfig,
fsmount), :mod:`.mountcalls` (open_tree, mount_setattr, move_mount, umount),
:mod:`.paths` (openat2, mkdirat, statx mount ids, and the emulated-kernel test
seam); :mod:`._wrapper` holds what they share. This module is their one face.
"""

from __future__ import annotations

from ._wrapper import read_fs_messages
from .fscontext import (
    fsconfig_create,
    fsconfig_create_excl,
    fsconfig_reconfigure,
    fsconfig_set_binary,
    fsconfig_set_fd,
    fsconfig_set_flag,
    fsconfig_set_path,
    fsconfig_set_path_empty,
    fsconfig_set_string,
    fsmount,
    fsopen,
    fspick,
)
from .mountcalls import mount_setattr, move_mount, open_tree, open_tree_attr, umount_at
from .paths import MountIds, mkdirat, openat2, openat2_if_exists, statx_mount_ids, statx_reports_unique_ids

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
    "openat2_if_exists",
    "read_fs_messages",
    "statx_mount_ids",
    "statx_reports_unique_ids",
    "umount_at",
]
