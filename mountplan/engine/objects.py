"""Planned objects: create each one pinned beneath its root, journaled with its undo (the apply side).

The parent is opened beneath the root with openat2 (RESOLVE_BENEATH|NO_SYMLINKS|
NO_MAGICLINKS; missing directories are made and journaled like mountpoints), and
the object is made relative to that fd with one path component: a symlink the
root's contents planted anywhere on the way is refused, never followed. What is
already at the path is never taken over: it is EEXIST, before anything is
journaled. Each creation is journaled before the syscall; then what is at the
path is opened (O_NOFOLLOW) and identified through that fd, and only if it is
plausibly what the create made (empty, ours, the mode we made it with) are its
device, inode and birth time journaled, so undo and destroy remove only that.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mountplan._kernel import BorrowedFd, Fd
from mountplan.compiler import Step, StepKind
from mountplan.errors import ExecutionError, KernelError
from mountplan.model import ObjectKind, ObjectSpec
from mountplan.object_identity import ObservedObject

from .context import Context
from .managed_object import ManagedObject
from .mountpoint import MountpointMaker
from .ownership import identify, is_plausibly_new
from .roots import BENEATH, O_PATH_ANY, RootHandle, RootSet
from .transaction import Transaction, Undo

__all__ = ["ObjectHandles", "ObjectMaker"]


@dataclass(slots=True)
class ObjectHandles:
    """What one object's chain holds while it runs."""

    parent: Fd | None = None
    fd: Fd | None = None  # the directory or file made (symlinks have none)
    dev: int = 0
    ino: int = 0
    btime: int | None = None
    created: list[dict[str, Any]] = field(default_factory=list)

    def close(self) -> None:
        for fd in (self.fd, self.parent):
            if fd is not None:
                fd.close()


@dataclass(slots=True)
class ObjectMaker:
    """Runs the create chains of one apply's objects, in its transaction."""

    ctx: Context
    tx: Transaction
    rootset: RootSet
    maker: MountpointMaker = field(init=False)

    def __post_init__(self) -> None:
        self.maker = MountpointMaker(self.ctx, self.tx)

    def run_step(self, step: Step, spec: ObjectSpec, h: ObjectHandles) -> None:
        """Run one step of ``spec``'s chain."""
        _HANDLERS[step.kind](self, step, spec, self.rootset[spec.root], h)

    def managed(self, spec: ObjectSpec, h: ObjectHandles) -> ManagedObject:
        """The state record of an object whose chain has run."""
        return ManagedObject(
            spec.name, spec.root, spec.path, spec.kind.value, h.dev, h.ino, spec.link or "",
            -1 if spec.mode is None else spec.mode, -1 if spec.uid is None else spec.uid,
            -1 if spec.gid is None else spec.gid, created=h.created, btime=h.btime,
        )

    def _resolve_parent(self, step: Step, spec: ObjectSpec, root: RootHandle, h: ObjectHandles) -> None:
        parent_path, _, name = spec.path.rpartition("/")
        if parent_path:
            h.parent = self.maker.make_path(spec, root, parent_path, h.created, want_file=False, mode=0o755)
        else:
            h.parent = BorrowedFd(root.fileno(), f"root:{root.name}")
        shown = f"{root.name}:{spec.path}"
        found = self.ctx.backend.openat2_if_exists(h.parent.fileno(), name, O_PATH_ANY, BENEATH, shown=shown)
        if found is not None:
            found.close()
            raise KernelError(
                errno.EEXIST, _CREATE_OP[spec.kind], paths=[shown],
                hint="something mountplan did not make is already at this path; it is left alone (remove it, or drop the entry)",
            )

    def _create(self, spec: ObjectSpec, root: RootHandle, h: ObjectHandles, op: str, make: Callable[[int, str, str], Fd | None]) -> None:
        assert h.parent is not None
        name = spec.path.rpartition("/")[2]
        shown = f"{root.name}:{spec.path}"
        # Journal first: a crash after the syscall leaves a line recovery can act on.
        item = self.tx.record(Undo(0, op, root.name, spec.path, mount=spec.name, link=spec.link or ""))
        try:
            made = make(h.parent.fileno(), name, shown)
        except BaseException:
            self.tx.abandon(item)  # nothing was made: an undo would remove whatever is there
            raise
        # If opening fails, the item stays without a ``created`` line: undo then
        # removes only an empty object of ours born since the journal began.
        fd = made if made is not None else self._open_made(spec, h.parent.fileno(), name, shown)
        try:
            # Identity from the fd of what is there now, not from a later lookup by
            # name: someone with write access to the parent may have swapped in
            # their own object right after the create. That one is never chmod'ed,
            # chown'ed or recorded as ours.
            seen = identify(self.ctx, fd, shown)
            why = _not_just_made(seen, spec, fd, self.tx.since, shown)
        except BaseException:
            fd.close()
            raise
        if why:
            fd.close()
            self.tx.abandon(item)
            raise ExecutionError(f"{shown}: what is there after {_CREATE_OP[spec.kind]} {why}, so it is not taken over; left alone")
        self.tx.created(item, seen.dev, seen.ino, seen.btime)
        h.dev, h.ino, h.btime = seen.dev, seen.ino, seen.btime
        if spec.kind is ObjectKind.SYMLINK:
            fd.close()  # an O_PATH fd of the link itself: nothing more is done through it
        else:
            h.fd = fd

    def _open_made(self, spec: ObjectSpec, dirfd: int, name: str, shown: str) -> Fd:
        """Open what mkdirat/symlinkat just made, without following a symlink at its name."""
        k = self.ctx.backend
        if spec.kind is ObjectKind.DIRECTORY:
            # O_RDONLY|O_DIRECTORY|O_NOFOLLOW: an fd that fchmod/fchown and listdir accept.
            fd: Fd = k.open_directory(dirfd, name, shown=shown)
            return fd
        link: Fd = k.openat2(dirfd, name, O_PATH_ANY, BENEATH, shown=shown)
        return link

    def _mkdirat(self, step: Step, spec: ObjectSpec, root: RootHandle, h: ObjectHandles) -> None:
        k = self.ctx.backend

        def make(dirfd: int, name: str, shown: str) -> None:
            k.mkdirat(dirfd, name, _made_mode(spec), shown=shown)

        self._create(spec, root, h, "mkdir", make)

    def _create_file(self, step: Step, spec: ObjectSpec, root: RootHandle, h: ObjectHandles) -> None:
        k = self.ctx.backend
        mode = _made_mode(spec)

        def make(dirfd: int, name: str, shown: str) -> Fd:
            fd: Fd = k.create_file(dirfd, name, mode, shown=shown)
            return fd

        self._create(spec, root, h, "mkfile", make)

    def _symlinkat(self, step: Step, spec: ObjectSpec, root: RootHandle, h: ObjectHandles) -> None:
        k = self.ctx.backend
        assert spec.link is not None
        link = spec.link

        def make(dirfd: int, name: str, shown: str) -> None:
            k.symlinkat(link, dirfd, name, shown=shown)

        self._create(spec, root, h, "mklink", make)

    def _fchown(self, step: Step, spec: ObjectSpec, root: RootHandle, h: ObjectHandles) -> None:
        assert h.fd is not None
        uid = -1 if spec.uid is None else spec.uid
        gid = -1 if spec.gid is None else spec.gid
        self.ctx.backend.fchown(h.fd.fileno(), uid, gid, shown=f"{root.name}:{spec.path}")

    def _fchmod(self, step: Step, spec: ObjectSpec, root: RootHandle, h: ObjectHandles) -> None:
        assert h.fd is not None and spec.mode is not None
        self.ctx.backend.fchmod(h.fd.fileno(), spec.mode, shown=f"{root.name}:{spec.path}")


def _made_mode(spec: ObjectSpec) -> int:
    """The mode mkdirat/openat create the object with (before the umask)."""
    if spec.kind is ObjectKind.DIRECTORY:
        return 0o700 if spec.mode is None else spec.mode & 0o777
    return 0o600 if spec.mode is None else spec.mode


def _not_just_made(seen: ObservedObject, spec: ObjectSpec, fd: Fd, since: int | None, shown: str) -> str:
    """Why ``seen`` (through ``fd``) cannot be what the create just made, or "" if it plausibly is."""
    if not is_plausibly_new(seen, spec.kind.value, spec.link or "", since):
        owner = f"owned by uid {seen.uid}" if seen.uid != os.geteuid() else "born before this run"
        what = f"a {seen.kind}" + (f" -> {seen.link!r}" if seen.link else "")
        return f"is {what} ({owner}, or not empty, or not the planned kind or text)"
    if spec.kind is not ObjectKind.SYMLINK and seen.mode & 0o777 & ~_made_mode(spec):
        # The umask only takes bits away: a bit we did not ask for is someone's chmod.
        return f"has mode {seen.mode:04o}, more than the {_made_mode(spec) & 0o777:04o} it was made with"
    if spec.kind is ObjectKind.DIRECTORY and _has_entries(fd, shown):
        return "is a directory that is not empty"
    return ""


def _has_entries(fd: Fd, shown: str) -> bool:
    try:
        return bool(os.listdir(fd.fileno()))
    except OSError as exc:
        raise KernelError(exc.errno or errno.EIO, "getdents64", paths=[shown]) from None


_CREATE_OP = {ObjectKind.DIRECTORY: "mkdirat", ObjectKind.FILE: "openat", ObjectKind.SYMLINK: "symlinkat"}

_Handler = Callable[[ObjectMaker, Step, ObjectSpec, RootHandle, ObjectHandles], None]
_HANDLERS: dict[StepKind, _Handler] = {
    StepKind.RESOLVE_PARENT: ObjectMaker._resolve_parent,
    StepKind.MKDIRAT: ObjectMaker._mkdirat,
    StepKind.CREATE_FILE: ObjectMaker._create_file,
    StepKind.SYMLINKAT: ObjectMaker._symlinkat,
    StepKind.FCHOWN: ObjectMaker._fchown,
    StepKind.FCHMOD: ObjectMaker._fchmod,
}
