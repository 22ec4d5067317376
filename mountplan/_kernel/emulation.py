"""Emulated older kernels: which syscalls each profile takes away, and how.

A profile is what a seccomp filter (:mod:`mountplan._kernel.seccomp`) answers in
place of the real kernel, plus one fact no errno filter can fake: kernels before
6.8 answer ``statx`` but leave ``STATX_MNT_ID_UNIQUE`` out of the mask. That one
is a test seam in :func:`mountplan._kernel.paths.statx_mount_ids`, switched by
the ``MOUNTPLAN_KERNEL_PROFILE`` environment variable that ``scripts/emulate-kernel``
exports next to installing the filter.

This module imports nothing heavy: the kernel layer reads it at import time.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

__all__ = ["ENV_VAR", "PROFILES", "Profile", "active_profile", "profile"]

#: Environment variable naming the emulated profile (exported by scripts/emulate-kernel).
ENV_VAR = "MOUNTPLAN_KERNEL_PROFILE"

_NEW_MOUNT_API = ("fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount")
_SINCE_6_8 = ("statmount", "listmount", "open_tree_attr")


@dataclass(frozen=True, slots=True)
class Profile:
    """One emulated kernel: the syscalls it lacks, the errno they answer, and statx's mask."""

    name: str
    description: str
    #: syscall name → errno the filter returns for it.
    denied: dict[str, int]
    #: Whether statx reports ``STATX_MNT_ID_UNIQUE`` (6.8+ and any container on such a kernel).
    has_unique_mount_ids: bool

    def takes_away(self, names: tuple[str, ...]) -> bool:
        """Whether any of ``names`` is denied under this profile."""
        return any(name in self.denied for name in names)


def _enosys(*names: str) -> dict[str, int]:
    return {name: errno.ENOSYS for name in names}


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "5.12",
            "Linux 5.12-6.7: no statmount/listmount/open_tree_attr; statx without the unique mount id",
            _enosys(*_SINCE_6_8),
            has_unique_mount_ids=False,
        ),
        Profile(
            "5.6",
            "Linux 5.6-5.11: as 5.12, and no mount_setattr",
            _enosys(*_SINCE_6_8, "mount_setattr"),
            has_unique_mount_ids=False,
        ),
        Profile(
            "5.2",
            "Linux 5.2-5.5: as 5.6, and no openat2",
            _enosys(*_SINCE_6_8, "mount_setattr", "openat2"),
            has_unique_mount_ids=False,
        ),
        Profile(
            "5.1",
            "Linux before 5.2: no new mount API at all",
            _enosys(*_SINCE_6_8, "mount_setattr", "openat2", *_NEW_MOUNT_API),
            has_unique_mount_ids=False,
        ),
        # Docker 20.10's default profile carries the Linux 5.11 syscall list (moby#41889):
        # the new mount API is allowed with CAP_SYS_ADMIN, anything newer answers the
        # profile's default action, EPERM. The kernel itself is new, so statx is too.
        Profile(
            "container-eperm",
            "a container whose seccomp profile predates Linux 5.12 (Docker 20.10 with CAP_SYS_ADMIN): "
            "mount_setattr, statmount, listmount, open_tree_attr answer EPERM",
            {name: errno.EPERM for name in ("mount_setattr", *_SINCE_6_8)},
            has_unique_mount_ids=True,
        ),
    )
}


def profile(name: str) -> Profile:
    """The profile called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown kernel profile {name!r} (known: {known})") from None


def active_profile() -> Profile | None:
    """The profile ``MOUNTPLAN_KERNEL_PROFILE`` names, or None when it is unset or empty."""
    name = os.environ.get(ENV_VAR, "")
    return profile(name) if name else None
