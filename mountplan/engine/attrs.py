"""Set mount attributes and propagation with mount_setattr, or mount(2) where the kernel lacks it (< 5.12).

mount_setattr works on detached and attached mounts alike and can recurse into
a tree; the classic mount(2) reaches only an attached mount and one mount at a
time. Plans that need the difference (attributes on a recursive bind's
submounts) ask for mount_setattr before any change (:func:`required_for`).
"""

from __future__ import annotations

import functools

from mountplan._kernel import AtFlag, MountAttr, detect
from mountplan._kernel import Propagation as KernelPropagation
from mountplan.model import Plan

from .context import Context

_NONE = MountAttr(0)


@functools.cache
def has_mount_setattr() -> bool:
    return detect().has("mount_setattr")


def required_for(plan: Plan) -> tuple[str, ...]:
    """Syscalls beyond the always-required ones that this plan cannot do without.

    mount_setattr (5.12) for attributes on a recursive bind's submounts and for
    any idmapped bind.
    """
    recursive_attrs = any(m.bind is not None and m.bind.recursive and m.attrs for m in plan.mounts)
    # An idmapping can only be set with mount_setattr (or open_tree_attr, 6.15), never mount(2).
    idmapped = any(m.bind is not None and m.bind.idmap is not None for m in plan.mounts)
    return ("mount_setattr",) if recursive_attrs or idmapped else ()


def require_features(plan: Plan) -> None:
    """Refuse, before any change, a kernel without what ``plan`` needs (FeatureMissingError).

    The always-required syscalls are checked first, except that a plan with an
    idmapped bind asks for mount_setattr before anything: nothing else can set
    an idmapping, so "needs Linux 5.12" is the answer even where older syscalls
    are missing too.
    """
    features = detect()
    if any(m.bind is not None and m.bind.idmap is not None for m in plan.mounts):
        features.require("mount_setattr")
    features.require()
    features.require(*required_for(plan))


def set_attrs(
    ctx: Context,
    fd: int,
    attr_set: MountAttr = _NONE,
    attr_clr: MountAttr = _NONE,
    *,
    propagation: KernelPropagation | None = None,
    recursive: bool = False,
    shown: str = "",
) -> None:
    """Set/clear attributes and the propagation type of the mount whose root ``fd`` is.

    Without mount_setattr the mount must be attached, and ``recursive`` applies
    to propagation only (``MS_REC``); required_for() keeps recursive attributes
    from getting here.
    """
    if has_mount_setattr():
        flags = AtFlag.EMPTY_PATH | (AtFlag.RECURSIVE if recursive else AtFlag(0))
        ctx.backend.mount_setattr(fd, "", flags, attr_set, attr_clr, propagation=propagation)
        return
    if attr_set or attr_clr:
        ctx.backend.remount_attrs(fd, attr_set, attr_clr, shown=shown)
    if propagation is not None:
        ctx.backend.set_propagation(fd, propagation, recursive=recursive, shown=shown)
