"""Idmapped binds: the user namespace a bind takes its mapping from, and ``MOUNT_ATTR_IDMAP`` on the clone.

The mapping is set with mount_setattr on the detached clone (the kernel refuses
it on an attached mount and on an idmapped one, fs/namespace.c can_idmap_mount).
When the kernel refuses, the error says why as far as this module has checked:
for EINVAL the call is repeated with the mapping alone, then on the clone's top
mount alone, which tells apart a filesystem without idmap support (named by its
type), a submount of a recursive bind, and an attribute problem; for EPERM the
source mount's own attributes and this process's user namespace are read.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from mountplan._idmap_drift import IdmapEvidence
from mountplan._kernel import AT_FDCWD, AtFlag, Fd, MountAttr, userns_identity
from mountplan._kernel.statmount import statmount_idmap
from mountplan.errors import KernelError
from mountplan.livetable import LiveMount, LiveTable, TableSource, read_live_table
from mountplan.model import IdMapping, MountSpec, Plan

from .context import Context
from .roots import O_PATH_ANY, resolve
from .state import ManagedMount

if TYPE_CHECKING:
    from .roots import RootSet


class SourceLookup(Protocol):
    """What the diagnosis reads besides the kernel: the Attacher during apply, a probe during plan."""

    ctx: Context
    rootset: RootSet

    def mount_by_id(self, mnt_id: int, unique: bool) -> LiveMount | None: ...

    def source_path(self, spec: MountSpec) -> str: ...

__all__ = ["SourceLookup", "idmap_evidence", "make_userns_for", "set_idmap"]

_INITIAL_UID_MAP = ["0", "0", "4294967295"]


def make_userns_for(ctx: Context, idmap: IdMapping) -> Fd:
    """The user namespace for ``idmap``: opened (``userns``) or made with its maps."""
    if idmap.userns is not None:
        fd: Fd = ctx.backend.open_userns(idmap.userns)
        return fd
    uid_map = "".join(r.map_line() + "\n" for r in idmap.uids)
    gid_map = "".join(r.map_line() + "\n" for r in idmap.gids)
    made: Fd = ctx.backend.make_userns(uid_map, gid_map)
    return made


def set_idmap(
    attacher: SourceLookup, spec: MountSpec, mnt: Fd, userns: Fd, attr_set: MountAttr, attr_clr: MountAttr
) -> None:
    """Set the attributes and the mapping of ``userns`` on the detached clone ``mnt`` in one call."""
    assert spec.bind is not None
    backend = attacher.ctx.backend
    flags = AtFlag.EMPTY_PATH | (AtFlag.RECURSIVE if spec.bind.recursive else AtFlag(0))
    try:
        backend.mount_setattr(mnt.fileno(), "", flags, attr_set | MountAttr.IDMAP, attr_clr, userns_fd=userns.fileno())
    except KernelError as exc:
        hint = ""
        if exc.errno == errno.EINVAL:
            hint = _einval_cause(attacher, spec, mnt, userns, flags)
        elif exc.errno == errno.EPERM:
            # Never the generic mount_setattr hint (locked flags): an idmapping clears none.
            hint = _eperm_cause(attacher, spec) or (
                "the kernel refuses an idmapping without CAP_SYS_ADMIN over the user namespace that owns the "
                "filesystem and over the mapping's user namespace (never the initial one); which of these "
                "failed was not determined here"
            )
        if not hint:
            raise
        raise KernelError(
            exc.errno or errno.EINVAL, exc.op, paths=[spec.bind.source.render()], flags=exc.flags,
            kernel_messages=exc.kernel_messages, hint=hint,
        ) from None


def _einval_cause(attacher: SourceLookup, spec: MountSpec, mnt: Fd, userns: Fd, flags: AtFlag) -> str:
    """Ask the kernel again, with the mapping alone, and name what it refuses ('' when not the mapping)."""
    assert spec.bind is not None and spec.bind.idmap is not None
    backend = attacher.ctx.backend
    # The clone is thrown away on failure, so probing on it changes nothing that stays.
    try:
        backend.mount_setattr(mnt.fileno(), "", flags, MountAttr.IDMAP, userns_fd=userns.fileno())
    except KernelError as again:
        if again.errno != errno.EINVAL:
            return ""
    else:
        return ""  # the mapping alone is accepted: the attributes were the problem
    source = _source_mount(attacher, spec)
    fs = f"the {source.fs_type} filesystem" if source is not None else "the source's filesystem"
    where = f" (mounted on {source.mount_point})" if source is not None else ""
    also = ""
    if spec.bind.idmap.userns is not None:
        also = (f", or {spec.bind.idmap.userns} is the user namespace that owns it (its own mapping is refused "
                "as an idmapping)")
    if flags & AtFlag.RECURSIVE:
        try:
            backend.mount_setattr(mnt.fileno(), "", AtFlag.EMPTY_PATH, MountAttr.IDMAP, userns_fd=userns.fileno())
        except KernelError as top:
            if top.errno != errno.EINVAL:
                return ""
        else:
            beneath = _submounts(attacher, spec, source)
            listed = "; ".join(f"{m.fs_type} on {m.mount_point}" for m in beneath) or "none seen now"
            return (
                f"{fs} of bind source {spec.bind.source.render()}{where} supports idmapped mounts, but a mount "
                f"beneath it does not (a recursive bind idmaps every mount of the tree; beneath it: {listed}); "
                "bind with `recursive: false`, or bind only what can be idmapped"
            )
    return (
        f"{fs} of bind source {spec.bind.source.render()}{where} does not support idmapped mounts "
        f"(the kernel allows them only on filesystems that declare FS_ALLOW_IDMAP){also}"
    )


def _eperm_cause(attacher: SourceLookup, spec: MountSpec) -> str:
    """Why the kernel refused with EPERM, for the causes checked here ('' when none is)."""
    assert spec.bind is not None and spec.bind.idmap is not None
    source = _source_mount(attacher, spec)
    if source is not None and source.attrs & MountAttr.IDMAP:
        return (
            f"bind source {spec.bind.source.render()} lies on {source.mount_point}, which is idmapped already: "
            "the kernel never changes or stacks a mount's idmapping; bind the path under that mount instead"
        )
    uid_map = _own_uid_map()
    if uid_map is not None and uid_map.split() != _INITIAL_UID_MAP:
        fs = f"the {source.fs_type} filesystem on {source.mount_point}" if source is not None else "its filesystem"
        shown = ", ".join(line.strip() for line in uid_map.strip().splitlines())
        return (
            f"this process runs in a user namespace (uid_map {' '.join(shown.split())}); the kernel idmaps "
            "a mount only for a caller with CAP_SYS_ADMIN in the user namespace that owns its filesystem, so "
            f"{fs} must have been mounted inside this user namespace (a tmpfs the plan makes is)"
        )
    return ""


def _own_uid_map() -> str | None:
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read()
    except OSError:
        return None


def _source_mount(attacher: SourceLookup, spec: MountSpec) -> LiveMount | None:
    """The mount the bind source lies on (the top of the clone), from the live table."""
    assert spec.bind is not None
    backend = attacher.ctx.backend
    ref = spec.bind.source
    try:
        if ref.root is None:
            ids = backend.statx_mount_ids(AT_FDCWD, ref.path, AtFlag(0))
        else:
            fd = resolve(backend, attacher.rootset[ref.root], ref.path, O_PATH_ANY)
            try:
                ids = backend.statx_mount_ids(fd.fileno())
            finally:
                fd.close()
    except (KernelError, KeyError):
        return None
    return attacher.mount_by_id(ids.mnt_id, ids.unique)


def _submounts(attacher: SourceLookup, spec: MountSpec, source: LiveMount | None) -> list[LiveMount]:
    path = attacher.source_path(spec)
    try:
        table = read_live_table(beneath=[path])
    except (KernelError, ValueError):
        return []
    return [m for m in table if source is None or m.mount_point != source.mount_point]


def idmap_evidence(
    plan: Plan, managed: Sequence[ManagedMount], live: LiveTable
) -> dict[str, IdmapEvidence]:
    """What the diff needs to compare each managed bind's idmapping with the plan (read only)."""
    specs = {m.name: m for m in plan.mounts}
    out: dict[str, IdmapEvidence] = {}
    for entry in managed:
        spec = specs.get(entry.name)
        planned = spec.bind.idmap if spec is not None and spec.bind is not None else None
        if spec is None or spec.bind is None or (planned is None and entry.idmap is None):
            continue
        maps = None
        if entry.unique and live.source is TableSource.STATMOUNT:
            try:
                maps = statmount_idmap(entry.mnt_id)
            except KernelError:
                maps = None  # gone meanwhile: the diff finds it missing from the table
        userns_now = userns_identity(planned.userns) if planned is not None and planned.userns else None
        out[entry.name] = IdmapEvidence(live=maps, recorded=entry.idmap, userns_now=userns_now)
    return out
