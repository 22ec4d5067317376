"""Ask the kernel, without changing anything, whether apply's new mounts would be accepted.

For every filesystem mount apply would create or replace, a filesystem context is
opened and each planned option set on it (``fsopen`` + ``fsconfig``, never
``FSCONFIG_CMD_CREATE``, nothing mounted): the kernel's own verdict and message,
as ``tmpfs: Bad value for 'size'``. Every bind source must exist (a root-relative
one beneath its root, without symlinks), and an idmapped bind's source must take
its mapping (a detached clone, idmapped and dropped: nothing is attached). Every
target is resolved beneath its root as apply will (no symlink anywhere in it, every
parent a directory; a missing part is fine, apply makes it), unless it lies beneath
another mount apply makes: that mount covers whatever is there now. ``validate``
stays offline; this is what ``plan`` adds.
"""

from __future__ import annotations

import errno
import functools
import os

from mountplan import _kernel
from mountplan._kernel import Fd
from mountplan.changes import Action, ChangeSet
from mountplan.errors import FeatureMissingError, KernelError
from mountplan.model import OVERLAY_PATH_KEYS, IdMapping, MountSpec, Plan

from .context import Context
from .mountpoint import probe_mountpoint
from .roots import O_PATH_ANY, RootSet, resolve

_NEW = {Action.CREATE, Action.REPLACE}
#: overlayfs keys that only Linux 6.8+ knows (the legacy ``lowerdir=a:b`` works everywhere).
_OVERLAY_6_8 = ("lowerdir+", "datadir+")


def require_overlay_keys(plan: Plan) -> None:
    """Refuse, before any change, a plan whose overlay keys this kernel's overlayfs does not know.

    The kernel is asked directly (an overlay context with ``lowerdir+=/`` set, never
    created): a container's kernel or a backport may differ from its version number.
    It is a question, not part of the transaction, so it bypasses the backend.
    """
    keys = sorted({o.key for m in plan.mounts if m.fs_type == "overlay" for o in m.options if o.key in _OVERLAY_6_8})
    if not keys or overlay_accepts("lowerdir+") is not False:
        return
    raise FeatureMissingError(
        "overlayfs lowerdir+", "6.8", errno.EINVAL, cause="old-kernel",
        hint=f"this kernel's overlayfs does not know {', '.join(keys)} (Linux 6.8); give the layers as the "
        "legacy `lowerdir: a:b` (relative layers are pinned beneath the root either way)",
    )


@functools.cache
def overlay_accepts(key: str) -> bool | None:
    """Whether overlayfs takes ``key`` (None: cannot tell here, e.g. no overlayfs or no capability)."""
    try:
        fs = _kernel.fsopen("overlay")
    except KernelError:
        return None
    try:
        _kernel.fsconfig_set_string(fs.fileno(), key, "/")
    except KernelError as exc:
        return False if exc.errno == errno.EINVAL else None
    finally:
        fs.close()
    return True


def kernel_problems(ctx: Context, plan: Plan, changes: ChangeSet, rootset: RootSet) -> tuple[str, ...]:
    """What the kernel would refuse among the mounts apply would make ('' reasons never)."""
    specs = {m.name: m for m in plan.mounts}
    problems: list[str] = []
    usernses: dict[IdMapping, Fd] = {}
    try:
        _collect(ctx, specs, changes, rootset, usernses, problems)
    finally:
        for fd in usernses.values():
            fd.close()
    return tuple(problems)


def _collect(
    ctx: Context, specs: dict[str, MountSpec], changes: ChangeSet, rootset: RootSet,
    usernses: dict[IdMapping, Fd], problems: list[str],
) -> None:
    new = [specs[c.mount] for c in changes.changes if c.mount in specs and c.action in _NEW]
    new_targets = {(spec.root, spec.target) for spec in new}
    for spec in new:
        # In apply's order: the filesystem (or the bind's source) is made before the mountpoint.
        problem = _bind_problem(ctx, spec, rootset) if spec.bind is not None else _fs_problem(ctx, spec)
        if not problem and spec.bind is not None and spec.bind.idmap is not None:
            from .idmap_probe import idmap_problem  # idmapped binds only

            problem = idmap_problem(ctx, spec, rootset, usernses)
        if not problem and not _is_covered(spec, new_targets):
            problem = _target_problem(ctx, spec, rootset)
        if problem:
            problems.append(f"{spec.name} ({spec.root}:{spec.target}): {problem}")


def _is_covered(spec: MountSpec, new_targets: set[tuple[str, str]]) -> bool:
    """``spec``'s target lies beneath a mount apply makes: it mounts that one first (the compiler
    orders nested targets), so what the root holds there now is covered, never resolved."""
    parts = spec.target.split("/")
    return any((spec.root, "/".join(parts[:i])) in new_targets for i in range(1, len(parts)))


def _target_problem(ctx: Context, spec: MountSpec, rootset: RootSet) -> str:
    root = rootset.get(spec.root)
    if root is None:
        return ""  # open_roots opened every root a mount uses; nothing to resolve without it
    try:
        probe_mountpoint(ctx.backend, root, spec.target)
    except KernelError as exc:
        return str(exc)
    return ""


def _fs_problem(ctx: Context, spec: MountSpec) -> str:
    k = ctx.backend
    assert spec.fs_type is not None
    try:
        fs = k.fsopen(spec.fs_type)
    except KernelError as exc:
        if exc.errno == errno.EPERM:
            return ""  # no CAP_SYS_ADMIN here (plan without --unshare): nothing to learn, apply says so
        return str(exc)
    try:
        for opt in spec.options:
            if spec.fs_type == "overlay" and opt.key in OVERLAY_PATH_KEYS:
                continue  # layers are pinned beneath the root at apply time
            if opt.value is None:
                k.fsconfig_set_flag(fs.fileno(), opt.key)
            else:
                k.fsconfig_set_string(fs.fileno(), opt.key, opt.value)
        if spec.source is not None:
            k.fsconfig_set_string(fs.fileno(), "source", spec.source)
    except KernelError as exc:
        return str(exc)
    finally:
        fs.close()
    return ""


def _bind_problem(ctx: Context, spec: MountSpec, rootset: RootSet) -> str:
    assert spec.bind is not None
    ref = spec.bind.source
    if ref.root is None:
        try:
            os.stat(ref.path)
        except OSError as exc:
            return f"bind source {ref.path!r}: {exc.strerror}"
        return ""
    root = rootset.get(ref.root)
    if root is None:
        return f"bind source root {ref.root!r} is not given"
    try:
        resolve(ctx.backend, root, ref.path, O_PATH_ANY).close()
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return ""  # may be made by an earlier mount of this apply (a path inside a planned tmpfs)
        return f"bind source {ref.render()}: {exc}"
    return ""
