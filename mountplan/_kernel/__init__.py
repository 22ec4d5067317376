"""The kernel layer: the only place in mountplan that touches ctypes.

Everything above this package sees typed wrappers named after the syscalls, an
owned :class:`Fd`, flag enums that render by name, and
:class:`~mountplan.errors.KernelError`.
"""

from __future__ import annotations

from .constants import (
    AT_FDCWD,
    AtFlag,
    FsmountFlag,
    FsopenFlag,
    FspickFlag,
    MountAttr,
    MoveMountFlag,
    OpenFlag,
    OpenTreeFlag,
    Propagation,
    Resolve,
    UmountFlag,
    flag_names,
)
from .detach import detach_fd
from .fd import BorrowedFd, Fd
from .features import Features, detect
from .identity import RootEvidence, root_evidence
from .legacy import remount_attrs, set_propagation
from .objects import create_file, fchmod, fchown, open_directory, symlinkat, unlinkat
from .syscalls import (
    MountIds,
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
    mkdirat,
    mount_setattr,
    move_mount,
    open_tree,
    open_tree_attr,
    openat2,
    openat2_if_exists,
    read_fs_messages,
    statx_mount_ids,
    umount_at,
)
from .userns import make_userns, open_userns, userns_identity

__all__ = [
    "AT_FDCWD",
    "AtFlag",
    "BorrowedFd",
    "Fd",
    "Features",
    "FsmountFlag",
    "FsopenFlag",
    "FspickFlag",
    "MountAttr",
    "MountIds",
    "MoveMountFlag",
    "OpenFlag",
    "OpenTreeFlag",
    "Propagation",
    "Resolve",
    "RootEvidence",
    "UmountFlag",
    "create_file",
    "detach_fd",
    "detect",
    "fchmod",
    "fchown",
    "flag_names",
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
    "make_userns",
    "mkdirat",
    "mount_setattr",
    "move_mount",
    "open_directory",
    "open_tree",
    "open_tree_attr",
    "open_userns",
    "openat2",
    "openat2_if_exists",
    "read_fs_messages",
    "remount_attrs",
    "root_evidence",
    "set_propagation",
    "statx_mount_ids",
    "symlinkat",
    "umount_at",
    "unlinkat",
    "userns_identity",
]
