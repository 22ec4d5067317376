"""Enter fresh private namespaces: the one implementation behind ``run --unshare`` and the test sandbox."""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import signal

from mountplan.errors import KernelError

from . import _libc
from .constants import AtFlag, Propagation, flag_names
from .syscalls import mount_setattr

_AT_FDCWD = -100

# prctl(2) options; prctl is not among the _libc exports, so it is bound here.
_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


class CloneFlag(enum.IntFlag):
    """``CLONE_NEW*`` flags for unshare(2)."""

    NEWNS = 0x00020000
    NEWCGROUP = 0x02000000
    NEWIPC = 0x08000000
    NEWUSER = 0x10000000
    NEWPID = 0x20000000
    NEWNET = 0x40000000


class MountFlag(enum.IntFlag):
    """The ``MS_*`` flags of the classic mount(2) that this module passes."""

    REC = 0x4000
    PRIVATE = 1 << 18


def unshare(flags: CloneFlag) -> None:
    """unshare(2); a new pid namespace takes effect for children only."""
    if _libc.unshare(int(flags)) != 0:
        raise KernelError(ctypes.get_errno(), "unshare", flags=flag_names(flags, CloneFlag))


def mount(
    source: str | None, target: str, fs_type: str | None, flags: MountFlag, data: str | None = None
) -> None:
    """The classic mount(2), through libc (its syscall number differs per architecture)."""
    ret = _libc.call(
        _libc.mount,
        source.encode() if source is not None else None,
        os.fsencode(target),
        fs_type.encode() if fs_type is not None else None,
        ctypes.c_ulong(int(flags)),
        data.encode() if data is not None else None,
    )
    if ret < 0:
        raise KernelError(-ret, "mount", paths=[target], flags=flag_names(flags, MountFlag))


def make_mounts_private() -> None:
    """Make every mount of this mount namespace private, so nothing propagates in or out.

    mount_setattr(2) needs Linux 5.12, and a container's seccomp profile may refuse
    it with EPERM although the classic call is allowed; for those two errnos the
    classic ``mount(NULL, "/", NULL, MS_REC|MS_PRIVATE)`` does the same job. Any
    other error is real and raised as is.
    """
    try:
        mount_setattr(_AT_FDCWD, "/", AtFlag.RECURSIVE, propagation=Propagation.PRIVATE)
    except KernelError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        mount(None, "/", None, MountFlag.REC | MountFlag.PRIVATE)


def enter_private_namespaces(*, as_root: bool) -> None:
    """Enter new mount and pid namespaces and make every mount private.

    ``as_root`` False also makes a user namespace mapping us to root, plus net and
    ipc namespaces it owns: the kernel lets a user namespace's owner mount sysfs
    and mqueue only for namespaces that user namespace owns (proc likewise needs
    the pid namespace). Nothing mounted afterwards propagates back out.
    """
    if as_root:
        unshare(CloneFlag.NEWNS | CloneFlag.NEWPID)
    else:
        uid, gid = os.geteuid(), os.getegid()
        unshare(CloneFlag.NEWUSER | CloneFlag.NEWNS | CloneFlag.NEWPID | CloneFlag.NEWNET | CloneFlag.NEWIPC)
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    make_mounts_private()


def enter_cgroup_namespace() -> None:
    """Enter a new cgroup namespace rooted at this process's current cgroup.

    A cgroup2 mount (or remount) made from the initial cgroup namespace rewrites
    the flags of the one cgroup2 hierarchy the whole machine shares (``nsdelegate``,
    ``memory_recursiveprot``, ...: kernel/cgroup/cgroup.c apply_cgroup_root_flags);
    from any other cgroup namespace the kernel ignores them. Needs CAP_SYS_ADMIN in
    the current user namespace, so call it after :func:`enter_private_namespaces`
    when unprivileged.
    """
    unshare(CloneFlag.NEWCGROUP)


def prctl_set_pdeathsig(signum: signal.Signals | int) -> None:
    """PR_SET_PDEATHSIG: send ``signum`` to this process when the thread that forked it exits.

    The setting is cleared by fork (children do not inherit it) and by a change
    of effective ids; it follows the parent *thread*, not the parent process.
    """
    ret = _libc.call(_prctl, _PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if ret < 0:
        raise KernelError(-ret, "prctl", flags="PR_SET_PDEATHSIG")


def prctl_get_pdeathsig() -> int:
    """PR_GET_PDEATHSIG: the parent-death signal of this process, 0 for none."""
    value = ctypes.c_int(0)
    ret = _libc.call(_prctl, _PR_GET_PDEATHSIG, ctypes.addressof(value), 0, 0, 0)
    if ret < 0:
        raise KernelError(-ret, "prctl", flags="PR_GET_PDEATHSIG")
    return value.value


#: The inode of the initial cgroup namespace (include/linux/proc_ns.h, PROC_CGROUP_INIT_INO).
_CGROUP_INIT_INO = 0xEFFFFFFB


def in_initial_cgroup_namespace() -> bool:
    """True when this thread is in the machine's initial cgroup namespace.

    A cgroup2 mount (or remount) made from there rewrites the machine-wide cgroup2
    options (nsdelegate, memory_recursiveprot, ...); from any other cgroup
    namespace the kernel ignores them.
    """
    try:
        return os.stat("/proc/thread-self/ns/cgroup").st_ino == _CGROUP_INIT_INO
    except OSError:
        return False
