"""Detect once per process which mount-API syscalls work here, and why the others do not.

A probe passes deliberately invalid arguments: a present syscall answers EBADF,
EINVAL or EFAULT. The two other answers have different causes, and each gets its
own message and fix (kernel.md, "EPERM has three meanings"):

- ENOSYS: the kernel is too old ("needs Linux X or newer"). A seccomp filter can
  answer ENOSYS too (runc does for syscalls newer than its profile); the message
  says so when a filter is active.
- EPERM from a seccomp filter: a container's syscall filter ("blocked by seccomp").
- EPERM from the kernel's own capability check: fsopen, fsmount, fspick and
  move_mount check CAP_SYS_ADMIN over the caller's mount namespace before looking
  at any argument ("needs CAP_SYS_ADMIN: run as root or with --unshare").

Telling the two EPERMs apart (each rule verified on 6.18, as root, as nobody, in
``unshare -Urm`` and ``unshare -Ur``, with and without a filter: tests/kernel):

- ``Seccomp: 0`` in /proc/self/status: no filter, so the EPERM is the capability.
- A probe that checks no capability (everything but the four above) answering
  EPERM under a filter: the filter.
- One of the four under a filter: if we hold CAP_SYS_ADMIN over the mount
  namespace (CapEff bit 21 *and* the mount namespace is owned by our user
  namespace or one below it: ``unshare -Ur`` without ``-m`` has the bit but not
  the namespace), the EPERM is the filter's. Without the capability the kernel
  refuses anyway; whether the filter also blocks the family is read from
  fsconfig, which checks no capability.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mountplan.errors import FeatureMissingError

from . import _libc
from .syscalls import statx_reports_unique_ids

__all__ = ["REQUIRED", "SINCE", "Availability", "Features", "detect", "has_mount_capability", "probe"]

#: syscall → first kernel version that has it.
SINCE: dict[str, str] = {
    "open_tree": "5.2",
    "move_mount": "5.2",
    "fsopen": "5.2",
    "fsconfig": "5.2",
    "fsmount": "5.2",
    "fspick": "5.2",
    "openat2": "5.6",
    "mount_setattr": "5.12",
    "statmount": "6.8",
    "listmount": "6.8",
    "open_tree_attr": "6.15",
}

#: What mountplan cannot work without, in the order a refusal names them
#: (fspick: apply reconfigures a drifted mount in place with it).
REQUIRED = ("fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "openat2")
#: Needed only by some plans (the engine asks for them before any change): mount_setattr
#: for attributes on a recursive bind's submounts; without it, attributes and
#: propagation go through the classic mount(2) (mountplan._kernel.legacy).
SOMETIMES = ("mount_setattr",)

#: Probes whose first check is ``may_mount()`` (CAP_SYS_ADMIN over the mount namespace).
_CAPABILITY_CHECKED = frozenset({"fsopen", "fsmount", "fspick", "move_mount"})
_CAP_SYS_ADMIN = 21
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1), <linux/nsfs.h>


class Availability(enum.Enum):
    """Whether a syscall works here, and if not, why."""

    PRESENT = "present"
    #: ENOSYS: the kernel predates the syscall.
    OLD_KERNEL = "old-kernel"
    #: EPERM from a seccomp filter (a container's syscall profile).
    SECCOMP = "seccomp"
    #: EPERM from the kernel: no CAP_SYS_ADMIN over this mount namespace.
    NO_CAPABILITY = "capability"
    #: No CAP_SYS_ADMIN, and the seccomp filter blocks the same family (fsconfig) too.
    NO_CAPABILITY_AND_SECCOMP = "capability+seccomp"
    #: EPERM that neither a filter nor a missing capability explains.
    EPERM_UNEXPLAINED = "eperm"


def _probe_errno(name: str) -> int:
    """0 when the syscall answered (anything but ENOSYS/EPERM), else that errno."""
    bad = ctypes.c_int(-1)
    null = ctypes.c_void_p(None)
    zero = ctypes.c_uint(0)
    args: tuple[object, ...]
    if name == "fsopen":
        args = (null, zero)
    elif name == "fsmount":
        args = (bad, zero, zero)
    elif name == "fsconfig":
        args = (bad, zero, null, null, ctypes.c_int(0))
    elif name in {"fspick", "open_tree"}:
        args = (bad, null, zero)
    elif name == "move_mount":
        args = (bad, null, bad, null, zero)
    elif name == "openat2":
        args = (bad, null, null, ctypes.c_size_t(0))
    elif name in {"mount_setattr", "open_tree_attr"}:
        # size 0 fails before mount_setattr's capability check, so this probe needs none.
        args = (bad, null, zero, null, ctypes.c_size_t(0))
    elif name in {"statmount", "listmount"}:
        args = (null, null, ctypes.c_size_t(0), zero)
    else:  # pragma: no cover - programming error
        raise KeyError(name)
    ret = _libc.syscall(name, *args)
    return -ret if ret < 0 and -ret in {errno.ENOSYS, errno.EPERM} else 0


def _status_field(name: str) -> str | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.strip()
    except OSError:
        pass
    return None


def _seccomp_filtered() -> bool | None:
    """True under a seccomp filter (mode 2), False without one, None when unknown."""
    mode = _status_field("Seccomp")
    return None if mode is None else mode != "0"


def has_mount_capability() -> bool:
    """CAP_SYS_ADMIN over our mount namespace: what fsopen's ``may_mount()`` checks."""
    cap_eff = _status_field("CapEff")
    if cap_eff is None or not int(cap_eff, 16) >> _CAP_SYS_ADMIN & 1:
        return False
    # The bit counts in our own user namespace; the mount namespace may be owned by
    # an ancestor (``unshare -U`` without ``-m``). NS_GET_USERNS answers EPERM exactly
    # when the owner is not our user namespace or one below it.
    try:
        fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        owner = fcntl.ioctl(fd, _NS_GET_USERNS)
    except OSError as exc:
        return exc.errno != errno.EPERM
    finally:
        os.close(fd)
    os.close(owner)
    return True


def _classify(
    name: str, err: int, filtered: bool | None, capable: bool, family_blocked: bool
) -> Availability:
    if err == 0:
        return Availability.PRESENT
    if err == errno.ENOSYS:
        return Availability.OLD_KERNEL
    if name not in _CAPABILITY_CHECKED:
        return Availability.SECCOMP if filtered else Availability.EPERM_UNEXPLAINED
    if capable:
        return Availability.SECCOMP if filtered else Availability.EPERM_UNEXPLAINED
    if filtered and family_blocked:
        return Availability.NO_CAPABILITY_AND_SECCOMP
    return Availability.NO_CAPABILITY


def _has_unique_mount_ids() -> bool:
    return statx_reports_unique_ids()


@dataclass(frozen=True, slots=True)
class Features:
    """Which syscalls work here, why the others do not, and facts derived from them."""

    present: frozenset[str]
    #: Why each syscall not in ``present`` is unusable (missing names: OLD_KERNEL).
    causes: Mapping[str, Availability] = field(default_factory=dict, hash=False)
    #: statx reports STATX_MNT_ID_UNIQUE (6.8+): a mount id that is never reused.
    #: False means only the reusable 32-bit id is available (honours the
    #: MOUNTPLAN_KERNEL_PROFILE test seam).
    has_unique_mount_ids: bool = False
    #: A seccomp filter is active (None: /proc/self/status unreadable).
    seccomp_filtered: bool | None = None

    def has(self, name: str) -> bool:
        """Whether syscall ``name`` works here."""
        return name in self.present

    def availability(self, name: str) -> Availability:
        """PRESENT, or why syscall ``name`` is unusable."""
        if name in self.present:
            return Availability.PRESENT
        return self.causes.get(name, Availability.OLD_KERNEL)

    def missing(self, *names: str) -> tuple[str, ...]:
        """The syscalls among ``names`` (default: REQUIRED) that do not work here, in order."""
        return tuple(name for name in names or REQUIRED if name not in self.present)

    def explain(self, name: str) -> str:
        """One sentence: why ``name`` is unusable and what fixes it ("" when present)."""
        cause = self.availability(name)
        if cause is Availability.PRESENT:
            return ""
        text = FeatureMissingError.explain(name, SINCE[name], cause.value)
        if cause is Availability.OLD_KERNEL and self.seccomp_filtered:
            text += " (a seccomp filter is active: it may be answering ENOSYS in the kernel's place)"
        return text

    def require(self, *names: str) -> None:
        """Raise FeatureMissingError for the first unusable syscall (default: REQUIRED).

        Call it before any change: the error names the syscall, the cause and the fix.
        """
        for name in self.missing(*names):
            cause = self.availability(name)
            err = errno.ENOSYS if cause is Availability.OLD_KERNEL else errno.EPERM
            raise FeatureMissingError(name, SINCE[name], err, cause=cause.value, hint=self.explain(name))


def probe() -> Features:
    """Probe the kernel now (uncached; use :func:`detect` in mountplan itself)."""
    errs = {name: _probe_errno(name) for name in SINCE}
    filtered = _seccomp_filtered()
    capable = has_mount_capability() if any(errs[n] == errno.EPERM for n in _CAPABILITY_CHECKED) else True
    family_blocked = errs["fsconfig"] == errno.EPERM
    causes = {name: _classify(name, err, filtered, capable, family_blocked) for name, err in errs.items()}
    return Features(
        present=frozenset(name for name, cause in causes.items() if cause is Availability.PRESENT),
        causes={name: cause for name, cause in causes.items() if cause is not Availability.PRESENT},
        has_unique_mount_ids=_has_unique_mount_ids(),
        seccomp_filtered=filtered,
    )


@functools.cache
def detect() -> Features:
    """Probe the kernel once per process."""
    return probe()
