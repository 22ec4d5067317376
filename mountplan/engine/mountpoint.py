"""Mountpoints: create what is missing of a target beneath its root, journaled, and never a symlink.

Each directory or file made is journaled before it is created (a crash in
between leaves a line whose path does not exist, which recovery skips) and
recorded by inode, so undo removes only what mountplan made.
:func:`probe_mountpoint` resolves a target the same way without creating
anything: what ``plan`` asks before apply would meet it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any

from mountplan._kernel import AtFlag, Fd
from mountplan.errors import KernelError
from mountplan.model import MountSpec, ObjectSpec

from .backend import Backend
from .context import Context
from .roots import BENEATH, O_PATH_ANY, O_PATH_DIR, RootHandle, resolve, resolve_parent
from .transaction import Transaction, Undo


@dataclass(slots=True)
class MountpointMaker:
    """Creates mountpoints (and overlay upper/work directories) for one apply's transaction."""

    ctx: Context
    tx: Transaction

    def make_path(
        self, spec: MountSpec | ObjectSpec, root: RootHandle, path: str, created: list[dict[str, Any]], *, want_file: bool, mode: int, create: bool = True
    ) -> Fd:
        """Create missing components of ``path`` beneath ``root``, journaling each one.

        Returns an O_PATH fd of ``path``, resolved beneath the root; never a symlink.
        """
        # Common case first: the parent exists (a target right under its root or
        # under an earlier mount), so one openat2 probes and at most one mkdir follows.
        try:
            parent, last = resolve_parent(self.ctx.backend, root, path)
        except KernelError as exc:
            if exc.errno != errno.ENOENT or not create:
                raise
            return self._make_walk(spec, root, path, created, want_file=want_file, mode=mode)
        try:
            return self._make_one(spec, root, parent.fileno(), last, path, created, last=True, want_file=want_file,
                                  mode=mode, create=create)
        finally:
            parent.close()

    def _make_walk(
        self, spec: MountSpec | ObjectSpec, root: RootHandle, path: str, created: list[dict[str, Any]], *, want_file: bool, mode: int
    ) -> Fd:
        """Walk ``path`` from the root one component at a time, creating what is missing."""
        parts = path.split("/")
        cur = resolve(self.ctx.backend, root, "", O_PATH_DIR)
        try:
            for i, part in enumerate(parts):
                nxt = self._make_one(spec, root, cur.fileno(), part, "/".join(parts[: i + 1]), created,
                                     last=i == len(parts) - 1, want_file=want_file, mode=mode, create=True)
                cur.close()
                cur = nxt
        except BaseException:
            cur.close()
            raise
        return cur

    def _make_one(
        self, spec: MountSpec | ObjectSpec, root: RootHandle, dirfd: int, part: str, sub: str, created: list[dict[str, Any]],
        *, last: bool, want_file: bool, mode: int, create: bool,
    ) -> Fd:
        """Open ``part`` in ``dirfd`` (beneath it, no symlinks), creating it first if missing."""
        k = self.ctx.backend
        shown = f"{root.name}:{sub}"
        flags = O_PATH_ANY if last else O_PATH_DIR
        if not create:
            return no_symlink(k.openat2(dirfd, part, flags, BENEATH, shown=shown), shown)
        found = k.openat2_if_exists(dirfd, part, flags, BENEATH, shown=shown)
        if found is not None:
            return no_symlink(found, shown)
        op = "mkfile" if last and want_file else "mkdir"
        # Journal before creating: a crash in between leaves a line whose path
        # does not exist, which recovery skips; never an unrecorded directory.
        item = self.tx.record(Undo(0, op, root.name, sub, mount=spec.name))
        if op == "mkdir":
            k.mkdirat(dirfd, part, mode if last else 0o755, shown=shown)
        else:
            _mkfile(dirfd, part, mode, shown)
        try:
            st = os.stat(part, dir_fd=dirfd, follow_symlinks=False)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, "fstatat", paths=[shown], flags="AT_SYMLINK_NOFOLLOW") from None
        # The birth time tells ours from a later object that got the same inode number.
        evidence = k.root_evidence(dirfd, part, AtFlag(0))
        btime = evidence.btime_ns if evidence.ino == st.st_ino else None
        self.tx.created(item, st.st_dev, st.st_ino, btime)
        created.append({"op": op, "path": sub, "dev": st.st_dev, "ino": st.st_ino, "btime": btime})
        return no_symlink(k.openat2(dirfd, part, flags, BENEATH, shown=shown), shown)


def probe_mountpoint(backend: Backend, root: RootHandle, path: str) -> None:
    """Resolve ``path`` beneath ``root`` as :meth:`MountpointMaker.make_path` does, creating nothing.

    Raises the KernelError apply would meet: a symlink anywhere in the path
    (ELOOP), a parent that is not a directory (ENOTDIR), no permission. A
    missing component is no error: apply creates it and everything below it,
    so nothing further down can be refused. (openat2 stops at the first bad
    component, so ENOENT means every component before the missing one is a
    directory and no symlink.)
    """
    shown = f"{root.name}:{path}"
    try:
        parent, last = resolve_parent(backend, root, path)
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise
    try:
        found = backend.openat2_if_exists(parent.fileno(), last, O_PATH_ANY, BENEATH, shown=shown)
    finally:
        parent.close()
    if found is not None:
        no_symlink(found, shown).close()


def no_symlink(fd: Fd, shown: str) -> Fd:
    """openat2 with O_PATH|O_NOFOLLOW opens a final symlink itself; a mountpoint must not be one."""
    if stat.S_ISLNK(os.fstat(fd.fileno()).st_mode):
        fd.close()
        raise KernelError(errno.ELOOP, "openat2", paths=[shown], hint="the target is a symlink, which is refused inside a root")
    return fd


def _mkfile(dirfd: int, name: str, mode: int, shown: str) -> None:
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o666, dir_fd=dirfd)
    except OSError as exc:
        raise KernelError(exc.errno or errno.EIO, "openat", paths=[shown], flags="O_CREAT|O_EXCL") from None
    os.close(fd)
