"""What ``run --unshare`` makes new, and entering it: the namespace selection, carried fd roots, the kernel check.

Mount and pid namespaces are always new (they are what makes every mount die
with mountplan); :class:`Namespace` names the others a command may get new.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Collection, Mapping

from mountplan._kernel.fd import Fd
from mountplan._kernel.features import REQUIRED, Availability, detect
from mountplan._kernel.namespaces import CloneFlag, enter_private_namespaces
from mountplan.errors import ExecutionError, KernelError, RootError

__all__ = [
    "ALL_NAMESPACES",
    "Namespace",
    "carried_fd",
    "enter_namespaces",
    "namespaces_for",
    "require_kernel_for_unshare",
]


class Namespace(enum.Enum):
    """A namespace ``run(unshare=...)`` can make new for the command, besides mount and pid (always new)."""

    NET = "net"
    IPC = "ipc"
    UTS = "uts"
    CGROUP = "cgroup"
    #: Implied without root (the only way to get the other namespaces); as root, maps root to itself.
    USER = "user"


#: What ``unshare=True`` makes new: everything a build action's sandbox should not share.
ALL_NAMESPACES: frozenset[Namespace] = frozenset({Namespace.NET, Namespace.IPC, Namespace.UTS, Namespace.CGROUP})

_CLONE_FLAGS = {
    Namespace.NET: CloneFlag.NEWNET,
    Namespace.IPC: CloneFlag.NEWIPC,
    Namespace.UTS: CloneFlag.NEWUTS,
    Namespace.CGROUP: CloneFlag.NEWCGROUP,
    Namespace.USER: CloneFlag.NEWUSER,
}


def namespaces_for(unshare: bool | Collection[Namespace | str]) -> frozenset[Namespace] | None:
    """The namespaces ``unshare`` asks for besides mount and pid; None for "run in this namespace".

    Names (``"net"``) are accepted as well as :class:`Namespace` values; an
    unknown name is an :class:`~mountplan.errors.ExecutionError` naming the ones there are.
    """
    if unshare is True:
        return ALL_NAMESPACES
    if unshare is False:
        return None
    if isinstance(unshare, str):
        unshare = unshare.split(",") if unshare else []
    chosen: set[Namespace] = set()
    for item in unshare:
        try:
            chosen.add(item if isinstance(item, Namespace) else Namespace(item))
        except ValueError:
            known = ", ".join(n.value for n in Namespace)
            raise ExecutionError(f"run: unknown namespace {item!r} to unshare (known: {known})") from None
    return frozenset(chosen)



def enter_namespaces(carry_fd: int | None, namespaces: frozenset[Namespace]) -> Fd | None:
    """Fresh mount + pid namespaces and ``namespaces``; as root without the capability, via a user namespace.

    Returns ``carry_fd``'s directory as seen in the new mount namespace.
    """
    also = CloneFlag(0)
    for namespace in namespaces:
        also |= _CLONE_FLAGS[namespace]
    if os.geteuid() == 0:
        try:
            return enter_private_namespaces(as_root=True, carry_fd=carry_fd, also=also)
        except KernelError as exc:
            if exc.errno != errno.EPERM:
                raise
    return enter_private_namespaces(as_root=False, carry_fd=carry_fd, also=also)


def carried_fd(roots: Mapping[str, str | int] | None) -> tuple[tuple[str, ...], int] | None:
    """The roots given as an fd (their names and the fd) that must be carried into the new namespace.

    An fd names a mount of the caller's namespace, useless as a mount target in
    another one. unshare(2) carries the working directory onto the new copy of
    its mount, and that is one directory only: a second fd root is refused
    rather than found again by its path.
    """
    fds: dict[int, list[str]] = {}
    for name, where in (roots or {}).items():
        if isinstance(where, int):
            fds.setdefault(where, []).append(name)
    if not fds:
        return None
    if len(fds) > 1:
        names = ", ".join(sorted(n for group in fds.values() for n in group))
        raise RootError(
            f"roots {names}: --unshare can carry one directory fd into the new mount namespace, "
            f"not {len(fds)}; give the others as paths"
        )
    ((fd, names_of_fd),) = fds.items()
    return tuple(names_of_fd), fd


def require_kernel_for_unshare() -> None:
    """Refuse before unsharing when the kernel (or a seccomp filter) lacks a syscall apply needs.

    The caller's probe may see no CAP_SYS_ADMIN (fsopen's EPERM); the new user
    namespace grants it, so only that cause is not a reason to refuse.
    """
    features = detect()
    names = [n for n in REQUIRED if features.availability(n) is not Availability.NO_CAPABILITY]
    if names:
        features.require(*names)
