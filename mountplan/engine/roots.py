"""Roots: named directories opened once as dirfds, and safe resolution beneath them.

Every target is resolved from its root fd with openat2 and
RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS: a root's contents are untrusted, and a
planted ``proc -> /`` or ``tmp -> ../..`` must not carry a mount outside it
(runc's CVE-2021-30465 class of bug). Mounts are moved onto the resolved fd, never
onto a path string that could be swapped in between.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Self

from mountplan._kernel import BorrowedFd, Fd, OpenFlag, Resolve
from mountplan.errors import RootError
from mountplan.model import Plan

from .backend import Backend

BENEATH = Resolve.BENEATH | Resolve.NO_SYMLINKS | Resolve.NO_MAGICLINKS
O_PATH_DIR = OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC
O_PATH_ANY = OpenFlag.PATH | OpenFlag.NOFOLLOW | OpenFlag.CLOEXEC


@dataclass(frozen=True, slots=True)
class RootIdentity:
    """Where a root was and which inode it was, so recovery reopens the same one."""

    path: str
    dev: int
    ino: int

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "dev": self.dev, "ino": self.ino}


class RootHandle:
    """An open root. ``owned`` False means the caller's fd, which we never close."""

    __slots__ = ("fd", "identity", "name", "owned")

    def __init__(self, name: str, fd: Fd | int, identity: RootIdentity, owned: bool) -> None:
        self.name: str = name
        self.fd: Fd | int = fd
        self.identity: RootIdentity = identity
        self.owned: bool = owned

    def fileno(self) -> int:
        return self.fd.fileno() if isinstance(self.fd, Fd) else self.fd

    def close(self) -> None:
        if self.owned and isinstance(self.fd, Fd):
            self.fd.close()

    def rebind(self, fd: Fd) -> None:
        """Use ``fd`` (a mount attached on top of this root) from now on; it is ours to close."""
        self.close()
        self.fd, self.owned = fd, True


class RootSet(Mapping[str, RootHandle]):
    """The roots of one run; closes the ones it opened."""

    def __init__(self, handles: dict[str, RootHandle]) -> None:
        self._handles = handles

    def __getitem__(self, name: str) -> RootHandle:
        return self._handles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(fd: int, shown: str) -> RootIdentity:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise RootError(f"root {shown!r} is not a directory")
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = shown
    return RootIdentity(path=path, dev=st.st_dev, ino=st.st_ino)


def open_roots(wanted: Mapping[str, str | int | None], needed: list[str]) -> RootSet:
    """Open every needed root: a path string, or an int fd owned by the caller.

    Raises RootError (before anything changes) for a root that is missing, not a
    directory or not given.
    """
    handles: dict[str, RootHandle] = {}
    try:
        for name in needed:
            value = wanted.get(name)
            if value is None:
                raise RootError(f"root {name!r} has no directory: give it with --root {name}=DIR")
            if isinstance(value, int):
                if not 0 <= value <= 2**31 - 1:
                    raise RootError(f"root {name!r}: {value} is not a file descriptor number")
                try:
                    os.fstat(value)
                except OSError as exc:
                    raise RootError(f"root {name!r}: fd {value} is not open ({exc.strerror})") from None
                handles[name] = RootHandle(name, value, _identity(value, f"fd:{value}"), owned=False)
                continue
            try:
                raw = os.open(value, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise RootError(f"root {name!r}: directory {value!r} does not exist") from None
            except NotADirectoryError:
                raise RootError(f"root {name!r}: {value!r} is not a directory") from None
            except OSError as exc:
                raise RootError(f"root {name!r}: cannot open {value!r}: {exc.strerror}") from None
            fd = Fd(raw, f"root:{name}")
            handles[name] = RootHandle(name, fd, _identity(raw, value), owned=True)
    except BaseException:
        for handle in handles.values():
            handle.close()
        raise
    return RootSet(handles)


def reopen_root(name: str, identity: RootIdentity) -> RootHandle | None:
    """Reopen a root recorded in the state file, if it is still the same inode."""
    try:
        raw = os.open(identity.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(raw)
    if (st.st_dev, st.st_ino) != (identity.dev, identity.ino):
        os.close(raw)
        return None
    return RootHandle(name, Fd(raw, f"root:{name}"), identity, owned=True)


def resolve(backend: Backend, root: RootHandle, path: str, flags: OpenFlag = O_PATH_ANY) -> Fd:
    """openat2 ``path`` beneath ``root``; symlinks anywhere in it are refused."""
    if path in {"", "."}:
        # The root itself: its open fd is exactly what resolving "." would give.
        return BorrowedFd(root.fileno(), f"root:{root.name}")
    return backend.openat2(root.fileno(), path, flags, BENEATH, shown=f"{root.name}:{path}")  # type: ignore[no-any-return]


def resolve_parent(backend: Backend, root: RootHandle, path: str) -> tuple[Fd, str]:
    """Open the directory holding ``path`` beneath ``root``; return it and the last name."""
    parent, _, name = path.rpartition("/")
    return resolve(backend, root, parent, O_PATH_DIR), name


def root_paths(plan: Plan, overrides: Mapping[str, str | int] | None) -> dict[str, str | int | None]:
    """Plan root paths with run-time overrides (paths or caller-owned fds) applied."""
    merged: dict[str, str | int | None] = {r.name: r.path for r in plan.roots}
    for name, value in (overrides or {}).items():
        if name not in merged:
            raise RootError(f"--root {name}: the plan has no root named {name!r} (it has {', '.join(sorted(merged)) or 'none'})")
        merged[name] = value
    return merged


def roots_used(plan: Plan) -> list[str]:
    """Every root a mount or object of ``plan`` is placed in, or a mount binds from."""
    used = {m.root for m in plan.mounts} | {o.root for o in plan.objects}
    used |= {m.bind.source.root for m in plan.mounts if m.bind is not None and m.bind.source.root is not None}
    return sorted(used)
