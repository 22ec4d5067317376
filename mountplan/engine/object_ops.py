"""Planned objects after apply: look at them, fix their mode in place, and remove them on destroy.

Every look and every change goes through the parent opened beneath the root
(openat2, no symlinks), then one path component with ``AT_SYMLINK_NOFOLLOW``:
a symlink planted at or above an object is seen as what it is, never followed.
An object is removed only while it is still the inode apply made (and a symlink
still holds its text); anything else at its path is reported and left alone.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import Any

from mountplan._kernel import Fd
from mountplan.changes import Action, ChangeSet
from mountplan.errors import ExecutionError, KernelError
from mountplan.model import ObjectSpec, Plan
from mountplan.object_changes import Found, ObservedObject, diff_objects, is_same_inode, is_same_object

from .context import Context
from .managed_object import ManagedObject
from .ownership import identify, observe_at
from .removal import remove_created
from .roots import BENEATH, O_PATH_ANY, RootHandle, RootSet, resolve_parent
from .state import State
from .transaction import Transaction, Undo

__all__ = ["forget_or_remove_object", "observe_object", "prune_object", "remove_object", "restore_object", "update_object", "with_objects"]

#: A parent path beneath the root that holds a symlink (ELOOP), leaves the root (EXDEV) or a non-directory.
_BLOCKED = frozenset({errno.ELOOP, errno.EXDEV, errno.ENOTDIR})
def _parent(ctx: Context, root: RootHandle, path: str) -> tuple[Fd, str] | KernelError:
    try:
        return resolve_parent(ctx.backend, root, path)
    except KernelError as exc:
        return exc


def observe_object(
    ctx: Context, root: RootHandle, path: str, missing: set[tuple[str, str]] | None = None
) -> ObservedObject:
    """What is at ``root:path`` now (lstat beneath the root).

    ``missing`` collects the parents found absent during one look at a plan's
    objects: the objects beneath one (the /dev symlinks before /dev is mounted)
    are absent too, with no further lookup.
    """
    parent_key = (root.name, path.rpartition("/")[0])
    if missing is not None and parent_key in missing:
        return ObservedObject(Found.ABSENT)
    found = _parent(ctx, root, path)
    if isinstance(found, KernelError):
        if found.errno == errno.ENOENT:
            if missing is not None:
                missing.add(parent_key)
            return ObservedObject(Found.ABSENT)
        if found.errno in _BLOCKED:
            return ObservedObject(Found.BLOCKED, detail=str(found))
        raise found
    parent, name = found
    try:
        return observe_at(ctx, parent, name, f"{root.name}:{path}")
    finally:
        parent.close()


def remove_object(ctx: Context, root: RootHandle, obj: ManagedObject, log: Any) -> tuple[str, bool] | None:
    """Remove ``obj`` if it is still what apply made, then the parents made for it.

    Returns None when it is removed or already gone, else why it was left alone
    and whether it is still ours (covered, or a directory someone filled: kept in
    the state) or not (replaced: forgotten, never removed).
    """
    shown = f"{root.name}:{obj.path}"
    found = _parent(ctx, root, obj.path)
    if isinstance(found, KernelError):
        if found.errno in {errno.ENOENT, errno.ENOTDIR}:
            log.warning("destroy.object_gone", object=obj.name, path=shown)
            return None
        return f"{obj.kind} {shown} (object {obj.name!r}) cannot be reached beneath its root: {found}; left alone", False
    parent, name = found
    try:
        seen = observe_at(ctx, parent, name, shown)
        if seen.found is Found.ABSENT:
            log.warning("destroy.object_gone", object=obj.name, path=shown)
            return None
        if seen.found is Found.COVERED:
            return f"{obj.kind} {shown} (object {obj.name!r}) is covered by a mount mountplan did not make; left alone", True
        if not is_same_object(obj, seen):
            what = f"a {seen.kind}" + (f" -> {seen.link!r}" if seen.link else "")
            return (f"{shown} (object {obj.name!r}) is no longer the {obj.kind} mountplan made (it is {what} "
                    f"with inode {seen.ino}, not {obj.ino}); left alone"), False
        try:
            ctx.backend.unlinkat(parent.fileno(), name, directory=obj.kind == "directory", shown=shown)
        except KernelError as exc:
            if exc.errno in {errno.ENOTEMPTY, errno.EEXIST}:
                return f"directory {shown} (object {obj.name!r}) is not empty; left alone", True
            raise
    finally:
        parent.close()
    log.info("object.removed", object=obj.name, path=shown)
    remove_created(ctx, obj.created, root, log)
    return None


def _open_ours(ctx: Context, root: RootHandle, path: str, dev: int, ino: int, btime: int | None) -> Fd | str:
    """An O_PATH fd of the object at ``path`` if it is still our directory or file (dev, ino, btime); else why not.

    O_PATH opens nothing: a FIFO or device swapped in is never opened, and a file
    of ours with mode 000 can still be fixed. fchown/fchmod take the fd as it is.
    """
    shown = f"{root.name}:{path}"
    try:
        parent, name = resolve_parent(ctx.backend, root, path)
    except KernelError as exc:
        if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
            return f"{shown} is gone"
        raise
    try:
        found = ctx.backend.openat2_if_exists(parent.fileno(), name, O_PATH_ANY, BENEATH, shown=shown)
    finally:
        parent.close()
    if found is None:
        return f"{shown} is gone"
    fd: Fd = found
    try:
        seen = identify(ctx, fd, shown)
    except BaseException:
        fd.close()
        raise
    if seen.kind not in {"directory", "file"} or not is_same_inode(seen, dev, ino, btime):
        fd.close()
        return f"{shown} is not the object mountplan made (a {seen.kind} with inode {seen.ino}, not {ino})"
    return fd


def _set(ctx: Context, fd: Fd, shown: str, mode: int, uid: int, gid: int) -> None:
    if uid != -1 or gid != -1:
        ctx.backend.fchown(fd.fileno(), uid, gid, shown=shown)
    if mode != -1:
        ctx.backend.fchmod(fd.fileno(), mode, shown=shown)


def update_object(ctx: Context, tx: Transaction, root: RootHandle, spec: ObjectSpec, obj: ManagedObject) -> None:
    """Fix an object's drifted mode/owner in place (fchown, fchmod), journaled with what it had."""
    fd = _open_ours(ctx, root, spec.path, obj.dev, obj.ino, obj.btime)
    if isinstance(fd, str):
        raise ExecutionError(f"cannot fix object {spec.name!r} in place: {fd}; left alone")
    try:
        seen = identify(ctx, fd, f"{root.name}:{spec.path}")
        restore = {"mode": seen.mode, "uid": seen.uid, "gid": seen.gid}
        tx.record(Undo(0, "chmod", root.name, spec.path, mount=spec.name, dev=obj.dev, ino=obj.ino, restore=restore,
                       btime=obj.btime))
        _set(ctx, fd, f"{root.name}:{spec.path}", -1 if spec.mode is None else spec.mode,
             -1 if spec.uid is None else spec.uid, -1 if spec.gid is None else spec.gid)
    finally:
        fd.close()
    obj.mode = obj.mode if spec.mode is None else spec.mode
    obj.uid = obj.uid if spec.uid is None else spec.uid
    obj.gid = obj.gid if spec.gid is None else spec.gid


def restore_object(ctx: Context, item: Undo, root: RootHandle, log: Any) -> None:
    """Undo an in-place mode/owner change (only on the inode it was made to).

    An object that is gone or no longer ours leaves nothing of ours to restore:
    that is done (with a warning), not a leftover that would block every later run.
    """
    assert item.restore is not None
    fd = _open_ours(ctx, root, item.path, item.dev, item.ino, item.btime)
    if isinstance(fd, str):
        log.warning("undo.object_lost", object=item.mount, reason=f"{fd}; its mode is not restored")
        return
    try:
        r = item.restore
        _set(ctx, fd, f"{root.name}:{item.path}", int(r["mode"]), int(r["uid"]), int(r["gid"]))
    finally:
        fd.close()


def forget_or_remove_object(ctx: Context, state: State, name: str, action: Action, rootset: RootSet, log: Any) -> list[str]:
    """Before (re)creating object ``name``: remove our old one for a replace (``[name]``), else forget its record.

    A CREATE with a record means it is gone, or lies in a mount apply (re)creates,
    or was replaced by someone else (then creating it fails with EEXIST).
    """
    if not state.has_object(name):
        return []
    obj = state.object(name)
    if action is Action.REPLACE:
        root = rootset.get(obj.root)
        if root is None:
            raise ExecutionError(f"cannot replace object {name!r}: its root {obj.root!r} is not open (the plan no longer names it)")
        outcome = remove_object(ctx, root, obj, log)
        if outcome is not None:
            if outcome[1]:  # still ours (covered, or a directory someone filled): it must go first
                raise ExecutionError(f"cannot replace object {name!r}: {outcome[0]}")
            log.warning("apply.forgot_object", object=name, reason=outcome[0])
        state.objects.remove(obj)
        return [name]
    state.objects.remove(obj)
    return []


def prune_object(ctx: Context, state: State, name: str, rootset: RootSet, log: Any) -> None:
    """Remove an object the plan no longer has (``apply --prune``); one that is not ours any more is reported."""
    obj = state.object(name)
    outcome = remove_object(ctx, rootset[obj.root], obj, log)
    if outcome is not None:
        log.warning("apply.kept_object", object=name, reason=outcome[0])
        if outcome[1]:
            return
    state.objects.remove(obj)


def with_objects(ctx: Context, plan: Plan, rootset: RootSet, state: State, changes: ChangeSet, *, prune: bool) -> ChangeSet:
    """``changes`` (the mounts') with the plan's objects classified after them (looked at beneath their roots)."""
    fresh = {(c.root, c.target): c.mount for c in changes.changes if c.action in {Action.CREATE, Action.REPLACE}}
    missing: set[tuple[str, str]] = set()
    observed = {o.name: observe_object(ctx, rootset[o.root], o.path, missing) for o in plan.objects if o.root in rootset}
    found, kept, problems = diff_objects(plan, state.objects, observed, fresh, prune=prune)
    return dataclasses.replace(
        changes, changes=changes.changes + tuple(found), kept=changes.kept + tuple(kept),
        problems=changes.problems + tuple(problems),
    )
