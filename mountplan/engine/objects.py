"""Planned objects: create each one pinned beneath its root, journaled with its undo (the apply side).

The parent is opened beneath the root with openat2 (RESOLVE_BENEATH|NO_SYMLINKS|
NO_MAGICLINKS; missing directories are made and journaled like mountpoints), and
the object is made relative to that fd with one path component: a symlink the
root's contents planted anywhere on the way is refused, never followed. What is
already at the path is never taken over: it is EEXIST, before anything is
journaled. Each creation is journaled before the syscall, then its device and
inode, so undo and destroy remove only that inode.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mountplan._kernel import AtFlag, BorrowedFd, Fd
from mountplan.compiler import Step, StepKind
from mountplan.errors import ExecutionError, KernelError
from mountplan.model import ObjectKind, ObjectSpec

from .context import Context
from .managed_object import ManagedObject
from .mountpoint import MountpointMaker
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
            h.fd = make(h.parent.fileno(), name, shown)
        except BaseException:
            self.tx.abandon(item)  # nothing was made: an undo would remove whatever is there
            raise
        st = os.fstat(h.fd.fileno()) if h.fd is not None else os.stat(name, dir_fd=h.parent.fileno(), follow_symlinks=False)
        h.dev, h.ino = st.st_dev, st.st_ino
        self.tx.created(item, st.st_dev, st.st_ino)
        evidence = self.ctx.backend.root_evidence(h.parent.fileno(), name, AtFlag(0))
        h.btime = evidence.btime_ns if evidence.ino == st.st_ino else None

    def _mkdirat(self, step: Step, spec: ObjectSpec, root: RootHandle, h: ObjectHandles) -> None:
        k = self.ctx.backend

        def make(dirfd: int, name: str, shown: str) -> None:
            k.mkdirat(dirfd, name, 0o700 if spec.mode is None else spec.mode & 0o777, shown=shown)

        self._create(spec, root, h, "mkdir", make)
        assert h.parent is not None
        shown = f"{root.name}:{spec.path}"
        # O_NOFOLLOW|O_DIRECTORY: a symlink swapped in after mkdirat is refused,
        # and another directory is caught by its inode (fchmod must hit ours).
        h.fd = k.open_directory(h.parent.fileno(), spec.path.rpartition("/")[2], shown=shown)
        st = os.fstat(h.fd.fileno())
        if (st.st_dev, st.st_ino) != (h.dev, h.ino):
            raise ExecutionError(f"{shown} was replaced between mkdirat and open; left alone")

    def _create_file(self, step: Step, spec: ObjectSpec, root: RootHandle, h: ObjectHandles) -> None:
        k = self.ctx.backend
        mode = 0o600 if spec.mode is None else spec.mode

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
