"""Unmount only what is proven ours: the id check, the unmount, the check after it, EBUSY.

There is no unmount-by-mount-id. The path ``parent/name`` reaches whatever is on
top of the stack at the moment of the call, and an O_PATH fd on our own mount
pins it (a plain unmount through it is always EBUSY). So an unmount is: prove
the mount at ``parent/name`` is ours (its mount id), unmount ``parent/name``
without following symlinks, then look again: if our id is *still* there, the
unmount hit a mount someone stacked on ours in between, and that is reported as
an error, never as success. A submount that a recursive bind did not clone is
foreign: it is never detached along with ours.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from mountplan._kernel import AtFlag, Fd, MountIds, UmountFlag
from mountplan.changes import descendants, mount_key
from mountplan.errors import BusyError, ExecutionError, KernelError
from mountplan.livetable import LiveMount, LiveTable, read_live_table

from .context import Context
from .holders import find_holders


class ForeignMountError(ExecutionError):
    """A mount mountplan did not make is in the way (on top of ours, or hit by an unmount)."""


def mount_ids_at(ctx: Context, parent: Fd, name: str) -> MountIds | None:
    """Ids of the mount on top at ``parent/name`` (None if the name is gone)."""
    try:
        return ctx.backend.statx_mount_ids(parent.fileno(), name, AtFlag.SYMLINK_NOFOLLOW)  # type: ignore[no-any-return]
    except KernelError as exc:
        if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
            return None
        raise


def is_ours_at(ctx: Context, parent: Fd, name: str, mnt_id: int, proof: list[int | None] | None = None) -> bool:
    """True when the mount on top at ``parent/name`` has our id (and, for a reusable 32-bit id, our root).

    ``proof`` is the RootEvidence recorded when the mount was made on a kernel
    without unique ids: an id match alone proves nothing there.
    """
    ids = mount_ids_at(ctx, parent, name)
    if ids is None or ids.mnt_id != mnt_id:
        return False
    if ids.unique or proof is None:
        return True
    return bool(ctx.backend.root_evidence(parent.fileno(), name, AtFlag(0)).to_json() == proof)


def find_mount(table: LiveTable, mnt_id: int, unique: bool) -> LiveMount | None:
    """Our mount in the live table by the id recorded when we made it."""
    if unique:
        return table.by_id(mnt_id)
    return table.by_old_id(mnt_id)


def describe(m: LiveMount) -> str:
    return f"{m.mount_point} ({m.fs_type} {m.source or '-'}, id {mount_key(m)})"


def unmount_owned(
    ctx: Context,
    parent: Fd,
    name: str,
    mnt_id: int,
    *,
    shown: str,
    point: str,
    recursive: bool,
    submounts: Iterable[int] = (),
) -> None:
    """Unmount our mount at ``parent/name`` (just proven ours by the caller) and verify it went.

    ``shown`` names it in messages, ``point`` is its absolute mount point.
    Raises ForeignMountError when the unmount hit a mount stacked on ours after
    the check, BusyError when it is busy (naming holders and foreign submounts).
    """
    try:
        ctx.backend.umount_at(parent.fileno(), name, UmountFlag.NOFOLLOW, shown=shown)
    except KernelError as exc:
        if exc.errno != errno.EBUSY:
            raise
        _unmount_busy(ctx, parent, name, mnt_id, shown, point, recursive=recursive, submounts=set(submounts), cause=exc)
    if is_ours_at(ctx, parent, name, mnt_id):
        # The unmount took the top of the stack, and the top was not ours: a
        # mount was stacked on ours between the id check and umount2.
        raise ForeignMountError(
            f"unmounting {shown} removed a mount mountplan did not make: it was mounted on top of ours "
            f"(mount id {mnt_id}) between the ownership check and the unmount. Ours is still mounted and "
            "kept in the state; run destroy again once nothing else mounts there"
        )


def _unmount_busy(
    ctx: Context,
    parent: Fd,
    name: str,
    mnt_id: int,
    shown: str,
    point: str,
    *,
    recursive: bool,
    submounts: set[int],
    cause: KernelError,
) -> None:
    table = read_live_table()
    ours = table.by_id(mnt_id) or table.by_old_id(mnt_id)  # one id space per process: one of them
    below = descendants(table, ours) if ours is not None else []
    # A recursive bind's clones are ours; anything else beneath is not, and
    # detaching ours would take it away with it.
    foreign = [m for m in below if not (recursive and mount_key(m) in submounts)]
    ids = {mnt_id} | {mount_key(m) for m in below}
    holders = [h for i in sorted(ids) for h in find_holders(i, point if i == mnt_id else None)]
    if foreign:
        raise BusyError(
            f"cannot unmount {shown}: {cause}; mounts mountplan did not make are beneath it: "
            + ", ".join(describe(m) for m in foreign)
            + ("; held by " + "; ".join(holders) if holders else "")
            + "; unmount them first",
            holders=holders,
        ) from cause
    if ctx.lazy or (recursive and not holders):
        # Nothing foreign beneath and no process holds it: what keeps it busy is
        # the subtree the recursive bind cloned, which goes with a detach.
        ctx.backend.umount_at(parent.fileno(), name, UmountFlag.NOFOLLOW | UmountFlag.DETACH, shown=shown)
        return
    raise BusyError(
        f"cannot unmount {shown}: {cause}"
        + (f"; held by {'; '.join(holders)}" if holders else "; a mount beneath it is in use")
        + "; stop them or use --lazy to detach",
        holders=holders,
    ) from cause
