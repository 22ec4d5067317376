"""Process-level kernel calls behind ``run --unshare`` and the test sandbox.

Fresh private namespaces (carrying one directory fd into the new mount
namespace), die-with-parent (PR_SET_PDEATHSIG), and a signalfd that tells a
signal the terminal sent to a whole process group from one a process sent.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import select
import signal
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mountplan.errors import KernelError

from . import _libc
from .constants import AT_FDCWD, AtFlag, Propagation, flag_names
from .fd import Fd
from .syscalls import mount_setattr

# prctl(2) options; prctl is not among the _libc exports, so it is bound here.
_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int

_signalfd = ctypes.CDLL(None, use_errno=True).signalfd
_signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_signalfd.restype = ctypes.c_int
#: glibc's sigset_t is 1024 bits; the kernel reads the first _NSIG (64) of them.
_SIGSET_WORDS = 1024 // (8 * ctypes.sizeof(ctypes.c_ulong))
#: struct signalfd_siginfo is 128 bytes; ssi_signo, ssi_errno, ssi_code, ssi_pid lead it.
_SIGINFO_SIZE = 128
_SIGINFO_HEAD = struct.Struct("<IiiI")
#: si_code of a signal the kernel sent itself (include/uapi/asm-generic/siginfo.h).
SI_KERNEL = 0x80


class CloneFlag(enum.IntFlag):
    """``CLONE_NEW*`` flags for unshare(2)."""

    NEWNS = 0x00020000
    NEWUTS = 0x04000000
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
        mount_setattr(AT_FDCWD, "/", AtFlag.RECURSIVE, propagation=Propagation.PRIVATE)
    except KernelError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        mount(None, "/", None, MountFlag.REC | MountFlag.PRIVATE)


def enter_private_namespaces(
    *, as_root: bool, carry_fd: int | None = None, also: CloneFlag | None = None
) -> Fd | None:
    """Enter new mount and pid namespaces and make every mount private.

    ``as_root`` False also makes a user namespace mapping us to root, plus (by
    default) net and ipc namespaces it owns: the kernel lets a user namespace's
    owner mount sysfs and mqueue only for namespaces that user namespace owns
    (proc likewise needs the pid namespace). ``also`` names exactly which other
    namespaces to make new (``NEWNET``, ``NEWIPC``, ``NEWUTS``, ``NEWCGROUP``,
    ``NEWUSER``), in the same unshare(2) call, so every one of them is owned by
    the new user namespace when there is one. Nothing mounted afterwards
    propagates back out.

    ``carry_fd``, a directory fd of the caller's mount namespace, comes back as
    an O_PATH fd of the *same directory on the new namespace's copy of its mount*
    (None without one). An fd keeps naming the old namespace's mount, where
    move_mount answers EINVAL; unshare(CLONE_NEWNS) moves exactly two references
    onto the copies, the process's root and working directory (fs/namespace.c
    copy_mnt_ns), so the fd travels as the working directory: no path is walked
    and a rename meanwhile changes nothing. The working directory is then set
    back by its path (``/`` when that is gone), as the kernel would have carried it.
    """
    cwd: str | None = None
    if carry_fd is not None:
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = None
        os.fchdir(carry_fd)
    if also is None:
        also = CloneFlag(0) if as_root else CloneFlag.NEWNET | CloneFlag.NEWIPC
    if as_root and not also & CloneFlag.NEWUSER:
        unshare(CloneFlag.NEWNS | CloneFlag.NEWPID | also)
    else:
        uid, gid = os.geteuid(), os.getegid()
        unshare(CloneFlag.NEWUSER | CloneFlag.NEWNS | CloneFlag.NEWPID | also)
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    make_mounts_private()
    if carry_fd is None:
        return None
    carried = Fd(os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), "carried root")
    try:
        os.chdir(cwd or "/")
    except OSError:
        os.chdir("/")
    return carried


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


def die_with_parent(is_parent_alive: Callable[[], bool], signum: signal.Signals = signal.SIGKILL) -> None:
    """Arm PR_SET_PDEATHSIG, then exit at once if the parent already died.

    The check after prctl closes the window between fork and prctl in which the
    parent may have died: the signal is armed only for a death still to come.
    ``is_parent_alive`` must not use getppid() in pid 1 of a new pid namespace
    (it reads 0 whoever the parent is); use :func:`is_pipe_open` on a pipe whose
    write end only the parent holds.
    """
    prctl_set_pdeathsig(signum)
    if prctl_get_pdeathsig() != signum or not is_parent_alive():
        os._exit(128 + signal.SIGKILL)


def is_pipe_open(read_fd: int) -> bool:
    """Whether some process still holds the write end of this pipe (no EOF pending)."""
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)
    return not poller.poll(0)


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


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """One signal read from a signalfd: its number, ``si_code`` and sender pid."""

    signo: int
    code: int
    pid: int

    @property
    def is_from_kernel(self) -> bool:
        """Sent by the kernel itself (SI_KERNEL): the terminal's ^C, ^\\ and hangup signals.

        The tty driver sends those to the whole foreground process group
        (drivers/tty/n_tty.c isig → kill_pgrp(..., priv=1)), so every member
        already has its copy; a process's kill(2) gives SI_USER instead.
        """
        return self.code == SI_KERNEL


def signalfd(signals: Iterable[int]) -> Fd:
    """signalfd(2), close-on-exec and non-blocking, for ``signals``.

    The caller must block them (pthread_sigmask) first, or they are delivered
    the ordinary way and never reach the fd.
    """
    mask = (ctypes.c_ulong * _SIGSET_WORDS)()
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    for signum in signals:
        mask[(int(signum) - 1) // bits] |= 1 << ((int(signum) - 1) % bits)
    ret = _libc.call(_signalfd, -1, ctypes.byref(mask), os.O_CLOEXEC | os.O_NONBLOCK)
    if ret < 0:
        raise KernelError(-ret, "signalfd")
    return Fd(ret, "signalfd")


def read_signalfd(fd: int) -> list[SignalInfo]:
    """Every signal pending on a non-blocking signalfd ([] when none)."""
    infos: list[SignalInfo] = []
    while True:
        try:
            data = os.read(fd, _SIGINFO_SIZE * 16)
        except BlockingIOError:
            return infos
        if not data:
            return infos
        for offset in range(0, len(data) - _SIGINFO_SIZE + 1, _SIGINFO_SIZE):
            signo, _errno, code, pid = _SIGINFO_HEAD.unpack_from(data, offset)
            infos.append(SignalInfo(signo, code, pid))
