"""``plan`` asks the kernel whether an idmapped bind would be accepted, changing nothing.

The source is cloned (open_tree, detached), the mapping set on the clone exactly
as apply sets it, and the clone dropped: a detached mount that is closed vanishes,
so nothing is attached and nothing propagates. A refusal is explained the way
apply explains it (:func:`~.idmap.set_idmap`).
"""

from __future__ import annotations

import errno

from mountplan._kernel import Fd, MountAttr
from mountplan.errors import KernelError, RootError
from mountplan.livetable import LiveMount, read_live_table
from mountplan.model import IdMapping, MountSpec

from .bind_source import bind_source_path, clone_bind_source
from .context import Context
from .idmap import make_userns_for, set_idmap
from .roots import RootSet

__all__ = ["idmap_problem"]


class _Probe:
    """The SourceLookup of a plan: the live table read on demand."""

    def __init__(self, ctx: Context, rootset: RootSet) -> None:
        self.ctx = ctx
        self.rootset = rootset

    def mount_by_id(self, mnt_id: int, unique: bool) -> LiveMount | None:
        table = read_live_table()
        return table.by_id(mnt_id) if unique else table.by_old_id(mnt_id)

    def source_path(self, spec: MountSpec) -> str:
        return bind_source_path(spec, self.rootset)


def idmap_problem(ctx: Context, spec: MountSpec, rootset: RootSet, usernses: dict[IdMapping, Fd]) -> str:
    """Why the kernel would refuse ``spec``'s idmapping ('' when it accepts, or cannot be asked here)."""
    assert spec.bind is not None and spec.bind.idmap is not None
    idmap = spec.bind.idmap
    try:
        userns = usernses.get(idmap)
        if userns is None:
            userns = usernses[idmap] = make_userns_for(ctx, idmap)
    except KernelError as exc:
        return f"idmap: {exc}"
    try:
        clone = _clone(ctx, spec, rootset)
    except KernelError as exc:
        return f"idmap: {exc}"
    if clone is None:
        return ""
    try:
        set_idmap(_Probe(ctx, rootset), spec, clone, userns, MountAttr(0), MountAttr(0))
    except KernelError as exc:
        return f"idmap: {exc}"
    finally:
        clone.close()
    return ""


def _clone(ctx: Context, spec: MountSpec, rootset: RootSet) -> Fd | None:
    """A detached clone of the source, made by apply's own code (None: no capability here, or not there yet)."""
    try:
        return clone_bind_source(ctx, spec, rootset)
    except RootError:
        return None  # the source's root is not open in this plan run
    except KernelError as exc:
        if exc.errno in {errno.EPERM, errno.ENOENT, errno.ENOTDIR}:
            return None  # no CAP_SYS_ADMIN (plan without --unshare), or made by an earlier mount of the apply
        raise
