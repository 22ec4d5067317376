"""Remove one of our mounts and the mountpoints made for it: destroy, prune, replace, rollback.

The mount is looked for where it was made; if something else is on top there,
it is *covered*: kept in the state and reported, never forgotten. If a directory
of its path was renamed away, the mount went along: it is found by its unique
id and unmounted where it is now (re-proven by id there).
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mountplan._kernel import Fd, Resolve
from mountplan.changes import descendants, mount_key
from mountplan.errors import BusyError, ExecutionError, KernelError
from mountplan.livetable import read_live_table
from mountplan.object_identity import Found, is_same_object

from .context import Context
from .ownership import OP_KIND, is_plausibly_new, observe_at
from .roots import O_PATH_DIR, RootHandle, resolve_parent
from .unmount import ForeignMountError, describe, find_mount, is_ours_at, unmount_owned


class Outcome(enum.Enum):
    REMOVED = "removed"
    GONE = "gone"


class CoveredError(ForeignMountError):
    """Our mount is still mounted, hidden under one mountplan did not make."""


def remove_mount(
    ctx: Context,
    root: RootHandle,
    target: str,
    mnt_id: int,
    unique: bool,
    *,
    recursive: bool = False,
    submounts: Sequence[int] = (),
    label: str = "",
    proof: list[int | None] | None = None,
) -> Outcome:
    """Unmount our mount ``mnt_id`` made at ``root:target``, wherever it is now."""
    shown = f"{root.name}:{target}"
    point = f"{root.identity.path.rstrip('/')}/{target}"
    if not target:
        return _remove_root_bind(ctx, root, mnt_id, unique, submounts)
    try:
        parent, name = resolve_parent(ctx.backend, root, target)
    except KernelError as exc:
        if exc.errno not in {errno.ENOENT, errno.ENOTDIR}:
            raise
    else:
        try:
            if is_ours_at(ctx, parent, name, mnt_id, proof):
                unmount_owned(ctx, parent, name, mnt_id, shown=shown, point=point, recursive=recursive, submounts=submounts)
                return Outcome.REMOVED
        finally:
            parent.close()
    table = read_live_table()
    ours = find_mount(table, mnt_id, unique)
    if ours is None:
        return Outcome.GONE
    if ours.mount_point == point:
        top = table.at(point)[-1]
        if top is ours:
            if unique:
                # Ours (the id is never reused), on top at its point, yet the path did not
                # reach it: a stranger mounted over a directory above it.
                raise CoveredError(
                    f"mount {label or target!r} at {shown} (mount id {mnt_id}) cannot be reached: a mount "
                    f"mountplan did not make covers a directory above it; it stays mounted and in the state; "
                    f"unmount that mount and run this again"
                )
            # Only a reusable 32-bit id can be on top here and not be ours
            # (is_ours_at checked its root): a stranger's mount that got our id.
            return Outcome.GONE
        raise CoveredError(
            f"mount {label or target!r} at {shown} (mount id {mnt_id}) is covered by a mount mountplan did not "
            f"make: {describe(top)}; it stays mounted and in the state; unmount the cover "
            f"(umount {top.mount_point}) and run this again"
        )
    if not unique:
        # A 32-bit id elsewhere may be a stranger's reuse: never act on it.
        return Outcome.GONE
    _remove_elsewhere(ctx, ours.mount_point, mnt_id, recursive=recursive, submounts=submounts)
    return Outcome.REMOVED


def _remove_root_bind(ctx: Context, root: RootHandle, mnt_id: int, unique: bool, submounts: Sequence[int]) -> Outcome:
    """Remove a root's private bind of itself; anything beneath it that it did not clone keeps it."""
    table = read_live_table()
    ours = find_mount(table, mnt_id, unique)
    if ours is None or (not unique and ours.mount_point != root.identity.path):
        return Outcome.GONE
    foreign = [m for m in descendants(table, ours) if mount_key(m) not in submounts]
    if foreign:
        raise BusyError(
            f"cannot remove the private bind of root {root.name!r}: mounts mountplan did not make are beneath it: "
            + ", ".join(describe(m) for m in foreign) + "; unmount them first",
            holders=[],
        )
    # Our own root fd pins the bind, so a plain unmount is EBUSY: with nothing
    # foreign beneath it, it is detached (unmount_owned's EBUSY path).
    _remove_elsewhere(ctx, ours.mount_point, mnt_id, recursive=True, submounts=submounts)
    return Outcome.REMOVED


def _remove_elsewhere(ctx: Context, mount_point: str, mnt_id: int, *, recursive: bool, submounts: Sequence[int]) -> None:
    """Unmount our mount at ``mount_point`` (a directory of its path was renamed), re-proven by id there."""
    parent_path, _, name = mount_point.rpartition("/")
    slash = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parent: Fd = ctx.backend.openat2(
            slash, parent_path.lstrip("/") or ".", O_PATH_DIR, Resolve.NO_SYMLINKS | Resolve.NO_MAGICLINKS,
            shown=parent_path or "/",
        )
    finally:
        os.close(slash)
    try:
        if not is_ours_at(ctx, parent, name, mnt_id):
            raise CoveredError(f"mount id {mnt_id} at {mount_point} is covered by a mount mountplan did not make")
        unmount_owned(ctx, parent, name, mnt_id, shown=mount_point, point=mount_point, recursive=recursive, submounts=submounts)
    finally:
        parent.close()


def remove_path(
    ctx: Context, root: RootHandle, op: str, path: str, dev: int, ino: int, at: tuple[Fd, str] | None = None,
    link: str = "", *, btime: int | None = None, since: int | None = None,
) -> None:
    """Remove a directory, file or symlink (``mklink``) a create made, if it is still what it made (beneath the root, no symlinks).

    With a recorded inode the proof is :func:`is_same_object` (device, inode, birth
    time, kind, a symlink's text). Without one (a run killed between the create and
    its ``created`` line) only an empty object of ours born since the journal began
    (``since``) is removed: anything else may be someone's, and is left alone.
    """
    shown = f"{root.name}:{path}"
    kind = OP_KIND[op]
    if at is not None:
        parent, name = at
    else:
        try:
            parent, name = resolve_parent(ctx.backend, root, path)
        except KernelError as exc:
            if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
                return
            raise
    try:
        seen = observe_at(ctx, parent, name, shown)
        if seen.found is Found.ABSENT:
            return
        if seen.found is Found.COVERED:
            raise KernelError(errno.EBUSY, "unlinkat", paths=[shown], hint="a mount is on it")
        if ino:
            ours = is_same_object(_Proof(kind, dev, ino, link, btime), seen)
        else:
            ours = is_plausibly_new(seen, kind, link, since)
        if not ours:
            what = f"symlink to {link!r}" if kind == "symlink" else kind
            proof = "" if ino else " (no inode was recorded, and it is not an empty one of ours made since the run began)"
            raise ExecutionError(f"{shown} is not the {what} mountplan made{proof}; left alone")
        # There is no unlink by fd: a swap between the look above and unlinkat can
        # only put another name *inside* the root under it (the parent fd is pinned
        # beneath the root), never send the removal outside.
        ctx.backend.unlinkat(parent.fileno(), name, directory=kind == "directory", shown=shown)
    finally:
        if at is None:
            parent.close()


@dataclass(frozen=True, slots=True)
class _Proof:
    kind: str
    dev: int
    ino: int
    link: str
    btime: int | None


def remove_created(ctx: Context, created: Sequence[dict[str, Any]], root: RootHandle, log: Any) -> None:
    """Remove the directories and files apply created for one mount, innermost first.

    A mountpoint someone filled or replaced since is kept: their data beats tidiness.
    """
    for item in reversed(created):
        try:
            btime = item.get("btime")
            remove_path(ctx, root, str(item["op"]), str(item["path"]), int(item["dev"]), int(item["ino"]),
                        link=str(item.get("link", "")), btime=None if btime is None else int(btime))
        except ExecutionError as exc:
            log.warning("destroy.kept_mountpoint", path=f"{root.name}:{item['path']}", reason=str(exc))
        except KernelError as exc:
            if exc.errno in {errno.ENOTEMPTY, errno.EBUSY}:
                log.warning("destroy.kept_mountpoint", path=f"{root.name}:{item['path']}", reason="not empty")
                continue
            raise

