"""Update a mount in place (mount_setattr, fspick + reconfigure) and put it back on undo.

What the mount had before is journaled first, so a failure later in the same
apply (or a crash, via recover) restores it.
"""

from __future__ import annotations

import errno
from typing import Any

from mountplan._kernel import FspickFlag, MountAttr
from mountplan._kernel import Propagation as KernelPropagation
from mountplan.changes import Change, compare, subtree_fields
from mountplan.errors import ExecutionError, KernelError
from mountplan.livetable import LiveTable, read_live_table
from mountplan.model import Attr, MountKind, MountSpec

from .attrs import set_attrs
from .context import Context
from .roots import O_PATH_ANY, RootHandle, resolve
from .transaction import Transaction, Undo
from .unmount import find_mount

#: Attribute bits a plan fully controls on a filesystem mount (cleared when not planned).
SETTABLE = (
    MountAttr.RDONLY | MountAttr.NOSUID | MountAttr.NODEV | MountAttr.NOEXEC | MountAttr.NODIRATIME
    | MountAttr.NOSYMFOLLOW | MountAttr.NOATIME | MountAttr.STRICTATIME
)


def update_in_place(ctx: Context, tx: Transaction, spec: MountSpec, root: RootHandle, change: Change, live: LiveTable) -> None:
    """Fix drift without a remount; the mount at the target must still be the one we made."""
    k = ctx.backend
    fields = {f.field.split(".")[0] for f in change.fields}
    target = resolve(k, root, spec.target, O_PATH_ANY)
    try:
        ids = k.statx_mount_ids(target.fileno())
        if ids.mnt_id != change.mnt_id:
            raise ExecutionError(f"mount at {root.name}:{spec.target} is not the one mountplan made", step=f"{spec.name}:update")
        restore = _restore_info(spec, change, live, ids.unique)
        tx.record(Undo(0, "update", root.name, spec.target, mnt_id=ids.mnt_id, mount=spec.name, restore=restore))
        if "attrs" in fields or "propagation" in fields:
            want = spec.kernel_attrs
            clear = MountAttr(0)
            if spec.kind is MountKind.FILESYSTEM:
                clear = MountAttr(int(SETTABLE) & ~int(want))
            elif Attr.RELATIME in spec.attrs:
                clear = MountAttr.NOATIME | MountAttr.STRICTATIME
            # A recursive bind's attributes cover its whole tree (AT_RECURSIVE).
            recursive = spec.bind is not None and spec.bind.recursive
            set_attrs(ctx, target.fileno(), want, clear, propagation=spec.propagation.kernel_value,
                      recursive=recursive, shown=f"{root.name}:{spec.target}")
        if "options" in fields or "superblock" in fields:
            options = [(opt.key, opt.value) for opt in spec.options] if "options" in fields else []
            if "superblock" in fields:
                options.append(("rw", None))  # clears the superblock's read-only flag
            _reconfigure(ctx, target.fileno(), options)
    finally:
        target.close()
    _check_took(spec, change, ids.unique, f"{root.identity.path.rstrip('/')}/{spec.target}")


def _check_took(spec: MountSpec, change: Change, unique: bool, point: str) -> None:
    """Read the mount back: an update the kernel silently ignored is an error, never a success."""
    assert change.mnt_id is not None
    table = read_live_table(beneath=[point])
    live = find_mount(table, change.mnt_id, unique)
    if live is None:
        raise ExecutionError(f"mount {spec.name!r} vanished during its update", step=f"{spec.name}:update")
    _, left = compare(spec, live)
    left += subtree_fields(spec, table, live)
    if left:
        raise ExecutionError(
            f"update of {spec.name!r} did not take: "
            + "; ".join(f"{f.field} is {f.live}, planned {f.planned}" for f in left)
            + " (the kernel accepted the change but kept the old value)",
            step=f"{spec.name}:update",
        )


def _reconfigure(ctx: Context, fd: int, options: list[tuple[str, str | None]]) -> None:
    k = ctx.backend
    fs = k.fspick(fd, "", FspickFlag.CLOEXEC | FspickFlag.EMPTY_PATH)
    try:
        for key, value in options:
            if value is None:
                k.fsconfig_set_flag(fs.fileno(), key)
            else:
                k.fsconfig_set_string(fs.fileno(), key, value)
        k.fsconfig_reconfigure(fs.fileno())
    finally:
        fs.close()


def _restore_info(spec: MountSpec, change: Change, table: LiveTable, unique: bool) -> dict[str, Any]:
    """The attributes, propagation and planned options a mount about to be updated has.

    ``table`` is the one the diff read under the lock; earlier updates in this
    apply touch other mounts only (mount_setattr without AT_RECURSIVE).
    """
    assert change.mnt_id is not None
    live = find_mount(table, change.mnt_id, unique)
    if live is None:
        raise ExecutionError(f"mount {spec.name!r} (id {change.mnt_id}) is not in the live table", step=f"{spec.name}:update")
    have = int(live.attrs) & int(SETTABLE)
    options: dict[str, str | None] = {}
    planned_keys = {opt.key for opt in spec.options}
    for item in live.super_options:
        key, sep, value = item.partition("=")
        if key in planned_keys:
            options[key] = value if sep else None
    return {"attrs": have, "clear": int(SETTABLE) & ~have, "propagation": live.propagation.name, "options": options}


def restore(ctx: Context, item: Undo, root: RootHandle) -> None:
    """Undo an in-place update: put back attributes, propagation type and options.

    A peer group or master the mount had is not restored: the kernel can make
    a mount shared or a slave again, but not rejoin a particular group.
    """
    k = ctx.backend
    r = item.restore
    if not isinstance(r, dict):
        raise ExecutionError(f"{item.describe()}: the journal has no record of what to restore")
    try:
        target = resolve(k, root, item.path, O_PATH_ANY)
    except KernelError as exc:
        if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
            return  # gone: nothing of ours to restore
        raise
    try:
        if k.statx_mount_ids(target.fileno()).mnt_id != item.mnt_id:
            return  # not the mount we updated any more
        set_attrs(ctx, target.fileno(), MountAttr(int(r["attrs"])), MountAttr(int(r["clear"])),
                  propagation=KernelPropagation[str(r["propagation"])], shown=f"{root.name}:{item.path}")
        options = r.get("options")
        if isinstance(options, dict) and options:
            _reconfigure(ctx, target.fileno(), [(str(key), None if v is None else str(v)) for key, v in sorted(options.items())])
    finally:
        target.close()
