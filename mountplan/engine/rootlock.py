"""Hold a plan's root directories for a whole operation: instances are per mount namespace, roots are not.

A plan instance is keyed by its mount namespace, so two ``run --unshare`` on one
root (or a run and an apply there) never share the instance lock. Yet a
mountpoint one of them created, and removes when it ends, may be exactly where
the other has mounted in its own namespace; removing it detaches that mount
there. So every apply, destroy and session (``run``, a worker's action) also
holds an exclusive flock(2) on each root directory itself: flock is on the
inode, so it holds across mount namespaces, state directories and users.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from mountplan.errors import LockError

from .roots import RootHandle, RootSet
from .statefs import flock_within

__all__ = ["roots_held"]


@contextlib.contextmanager
def roots_held(rootset: RootSet, timeout: float) -> Iterator[None]:
    """flock(LOCK_EX) every root of ``rootset`` (in inode order, so two holders never deadlock); wait ``timeout`` s."""
    fds: list[int] = []
    try:
        for handle in sorted(rootset.values(), key=lambda h: (h.identity.dev, h.identity.ino)):
            # flock needs a real open file: reopen the root's (possibly O_PATH) fd read-only.
            try:
                fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle.fileno())
            except PermissionError:
                continue  # a root this caller may not read (mode 0311) cannot be flocked: left unlocked
            fds.append(fd)
            _lock(fd, handle, timeout)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _lock(fd: int, handle: RootHandle, timeout: float) -> None:
    if not flock_within(fd, timeout):
        raise LockError(
            f"root {handle.name!r} ({handle.identity.path}) is in use by another mountplan run, apply or "
            f"destroy{_holders(fd)}; waited {timeout:g}s (see --lock-timeout)"
        )


def _holders(fd: int) -> str:
    """`` (pid N)`` for the processes /proc/locks says hold a flock on ``fd``'s inode, else ``""``."""
    st = os.fstat(fd)
    wanted = f":{st.st_ino}"
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}{wanted}"
    pids = []
    with contextlib.suppress(OSError), open("/proc/locks", encoding="ascii") as locks:
        for line in locks:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(wanted) and fields[5] == dev:
                pids.append(fields[4])
    return f" (pid {', '.join(pids)})" if pids else ""
