"""User namespaces for idmapped mounts: make one with a given mapping (without exec), or open one.

An idmapped mount takes its mapping from a user namespace fd (``mount_attr.userns_fd``).
To make one, a child is forked that unshares ``CLONE_NEWUSER`` and waits; the
parent writes its ``setgroups``/``uid_map``/``gid_map`` (a process cannot map
itself beyond its own id, so the writer must stay in the parent namespace: the
kernel checks the *opener's* capabilities, kernel/user_namespace.c
new_idmap_permitted), opens ``/proc/PID/ns/user`` and releases the child
explicitly (not by pipe EOF, which a fork in another thread would delay). The
namespace lives on in the fd and, once set, in the mount.

``/proc`` may belong to another pid namespace than ours (a sandbox that made a
new pid namespace but kept the host's /proc): the child is named there by the
pid that its pidfd's fdinfo shows, which the kernel reports in the pid
namespace of that /proc instance. The child is reaped only after its files are
opened, so its pid cannot be reused in between.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import struct

from mountplan.errors import KernelError

from . import _libc
from .fd import BorrowedFd, Fd

__all__ = ["CLONE_NEWUSER", "make_userns", "open_userns", "userns_identity"]

CLONE_NEWUSER = 0x10000000
_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), <linux/nsfs.h>
_CAP_SETUID, _CAP_SETGID = 7, 6


def make_userns(uid_map: str, gid_map: str) -> Fd:
    """A new user namespace (child of ours) with these maps (``"inside outside count\\n"`` lines)."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    release_r, release_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; only raw calls until _exit
        try:
            os.close(status_r)
            os.close(release_w)
            err = 0 if _libc.unshare(CLONE_NEWUSER) == 0 else ctypes.get_errno()
            os.write(status_w, struct.pack("<i", err))
            os.read(release_r, 1)  # a byte from the parent when it is done, or EOF if it is gone
        finally:
            os._exit(0)
    os.close(status_w)
    os.close(release_r)
    try:
        raw = os.read(status_r, 4)
        err = struct.unpack("<i", raw)[0] if len(raw) == 4 else errno.ECHILD
        if err:
            raise KernelError(err, "unshare", flags="CLONE_NEWUSER", hint=_unshare_hint(err))
        proc_pid = _proc_pid(pid)
        _write_map(proc_pid, "setgroups", "deny", missing_ok=True)
        _write_map(proc_pid, "uid_map", uid_map)
        _write_map(proc_pid, "gid_map", gid_map)
        path = f"/proc/{proc_pid}/ns/user"
        try:
            return Fd(os.open(path, os.O_RDONLY | os.O_CLOEXEC), "userns")
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, "open", paths=[path]) from None
    finally:
        os.close(status_r)
        _release(pid, release_w)
        _reap(pid)


def _release(pid: int, release_w: int) -> None:
    """Let the child go explicitly: EOF alone never comes while a fork elsewhere holds a copy of ``release_w``.

    Any fork in another thread of this process (another make_userns, the runner's
    helper) inherits the pipe (O_CLOEXEC acts only at exec), and waitpid would
    then wait as long as that process lives. The byte releases the child; the
    SIGKILL makes sure (it is our unreaped child, so the pid cannot be another's).
    """
    try:
        os.write(release_w, b"\0")
    except OSError:
        pass  # EPIPE: the child is gone already
    finally:
        os.close(release_w)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # pragma: no cover - an unreaped child can always be signalled
        pass


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue


def _proc_pid(pid: int) -> int:
    """``pid`` (in our pid namespace) as /proc names it."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        raise KernelError(exc.errno or errno.EIO, "pidfd_open", paths=[str(pid)]) from None
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "Pid" and int(value) > 0:
                    return int(value)
    except OSError as exc:
        raise KernelError(exc.errno or errno.EIO, "open", paths=[f"/proc/self/fdinfo/{pidfd}"],
                          hint="making a user namespace for an idmapped mount needs /proc") from None
    finally:
        os.close(pidfd)
    raise KernelError(errno.ESRCH, "open", paths=[f"/proc/self/fdinfo/{pidfd}"],
                      hint="this /proc belongs to a pid namespace that cannot see our children")


def _write_map(pid: int, name: str, text: str, *, missing_ok: bool = False) -> None:
    # The kernel takes a whole map in one write(2) at offset 0, and only once.
    path = f"/proc/{pid}/{name}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)
    except OSError as exc:
        if missing_ok and exc.errno == errno.ENOENT:
            return
        err = exc.errno or errno.EIO
        shown = text.strip().replace("\n", ", ")
        raise KernelError(err, "write", paths=[path], flags=shown, hint=_map_hint(name, text, err)) from None


def _unshare_hint(err: int) -> str:
    if err == errno.ENOSPC:
        try:
            with open("/proc/sys/user/max_user_namespaces", encoding="ascii") as f:
                limit = f.read().strip()
        except OSError:
            return ""
        return f"no more user namespaces may be made (user.max_user_namespaces = {limit})"
    return ""


def _map_hint(name: str, text: str, err: int) -> str:
    """A cause for a refused map write, only as far as it is checked here."""
    if err != errno.EPERM or name not in {"uid_map", "gid_map"}:
        return ""
    ours = _own_ranges(f"/proc/self/{name}")
    if ours is not None:
        for line in text.splitlines():
            _inside, outside, count = (int(v) for v in line.split())
            if not _covered(outside, count, ours):
                last = outside + count - 1
                return (
                    f"outside ids {outside}-{last} are not all mapped in this process's user namespace "
                    f"(/proc/self/{name}: {_show(ours)}); map only ids that exist here"
                )
    cap, cap_name = (_CAP_SETUID, "CAP_SETUID") if name == "uid_map" else (_CAP_SETGID, "CAP_SETGID")
    if not _has_cap(cap):
        return f"mapping more than the caller's own id needs {cap_name} in this user namespace"
    return ""


def _own_ranges(path: str) -> list[tuple[int, int]] | None:
    """The (first, count) id ranges that exist in our user namespace (the map's inside column)."""
    try:
        with open(path, encoding="ascii") as f:
            return [(int(parts[0]), int(parts[2])) for parts in (line.split() for line in f) if len(parts) == 3]
    except (OSError, ValueError):
        return None


def _covered(first: int, count: int, ranges: list[tuple[int, int]]) -> bool:
    # Our map's lines never overlap, so walk the range through them in order.
    position, end = first, first + count
    for start, length in sorted(ranges):
        if start <= position < start + length:
            position = start + length
            if position >= end:
                return True
    return position >= end


def _show(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{first}-{first + count - 1}" for first, count in ranges) or "nothing"


def _has_cap(cap: int) -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError):
        pass
    return False


def open_userns(ref: str) -> Fd:
    """An existing user namespace: an nsfs path (``/proc/PID/ns/user``) or ``fd:N`` (borrowed, not closed)."""
    if ref.startswith("fd:"):
        fd: Fd = BorrowedFd(int(ref[3:]), ref)
    else:
        try:
            fd = Fd(os.open(ref, os.O_RDONLY | os.O_CLOEXEC), f"userns:{ref}")
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, "open", paths=[ref]) from None
    try:
        kind = fcntl.ioctl(fd.fileno(), _NS_GET_NSTYPE)
    except OSError as exc:
        fd.close()
        if exc.errno in {errno.ENOTTY, errno.EINVAL}:
            raise KernelError(exc.errno, "ioctl", paths=[ref], flags="NS_GET_NSTYPE",
                              hint="not a namespace file: give /proc/PID/ns/user or a bind mount of one") from None
        raise KernelError(exc.errno or errno.EIO, "ioctl", paths=[ref], flags="NS_GET_NSTYPE") from None
    if kind != CLONE_NEWUSER:
        fd.close()
        raise KernelError(errno.EINVAL, "ioctl", paths=[ref], flags="NS_GET_NSTYPE",
                          hint="a namespace, but not a user namespace: give /proc/PID/ns/user")
    return fd


def userns_identity(ref: str) -> tuple[int, int] | None:
    """(device, inode) of the namespace ``ref`` names now, None when it cannot be opened."""
    try:
        fd = open_userns(ref)
    except (KernelError, ValueError):
        return None
    try:
        st = os.fstat(fd.fileno())
    finally:
        fd.close()
    return st.st_dev, st.st_ino
