"""Detached trees before Linux 6.15: build attached in a throwaway namespace, hand back a clone.

Before 6.15 move_mount refuses a detached mount as the target (EINVAL) and
``open_tree(OPEN_TREE_CLONE)`` and overlayfs refuse mounts of another namespace.
Attaching beneath an anchor and then detaching the anchor with
``umount2(MNT_DETACH)`` does not work either: a lazy unmount disconnects every
mount beneath the anchor, so the fd of the anchor sees the bare directories (seen
on 6.18). What does work on every kernel with the new mount API:

1. in the caller's namespace, clone each root (``OPEN_TREE_CLONE|AT_RECURSIVE``);
2. in a helper thread, ``unshare(CLONE_NEWNS)`` (a thread may: it affects that
   thread alone), make every mount of the new namespace private, and attach the
   clones on a scratch tmpfs there (stacked on ``/``, which no lookup of this
   thread starts beneath);
3. build the plan's mounts there with the ordinary attach steps (they are in
   that namespace, so every old-kernel rule is met);
4. clone each tree once more, recursively: the copies are detached, and when the
   thread ends its namespace, with everything attached in it, goes away.

An unbindable mount is left out of a recursive clone by the kernel, so a plan
with one is refused here, before anything is made.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING

from mountplan._kernel import AT_FDCWD, Fd, MoveMountFlag, OpenTreeFlag
from mountplan._kernel import Propagation as KernelPropagation
from mountplan._kernel.namespaces import CloneFlag, make_mounts_private, unshare
from mountplan.compiler import CompiledPlan
from mountplan.errors import FeatureMissingError
from mountplan.model import Plan, Propagation

from .attrs import set_attrs
from .context import Context
from .roots import RootHandle, RootSet

if TYPE_CHECKING:
    from .detached import BuildProgress

_CLONE_TREE = OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC | OpenTreeFlag.RECURSIVE | OpenTreeFlag.EMPTY_PATH


def refuse_unbindable(plan: Plan) -> None:
    """Refuse, before any change, what a recursive clone would silently leave out."""
    unbindable = sorted(m.name for m in plan.mounts if m.propagation is Propagation.UNBINDABLE)
    if unbindable:
        raise FeatureMissingError(
            "move_mount", "6.15", errno.EINVAL, cause="old-kernel",
            hint=f"mounts {', '.join(unbindable)} are unbindable: before Linux 6.15 a detached tree is a recursive "
            "clone, which leaves unbindable mounts out; use another propagation in the plan or Linux 6.15+ "
            "(move_mount between detached mounts)",
        )


def build_in_private_namespace(
    ctx: Context, plan: Plan, compiled: CompiledPlan, rootset: RootSet, progress: BuildProgress
) -> dict[str, Fd]:
    """The detached trees of ``plan`` (root name -> fd), built in a helper thread's own namespace."""
    result: dict[str, Fd] = {}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            result.update(_build_here(ctx, plan, compiled, rootset, progress))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            errors.append(exc)

    helper = threading.Thread(target=work, name=f"mountplan-detached-{plan.name}")
    helper.start()
    helper.join()
    if errors:
        raise errors[0]
    return result


def _build_here(
    ctx: Context, plan: Plan, compiled: CompiledPlan, rootset: RootSet, progress: BuildProgress
) -> dict[str, Fd]:
    """Runs in the helper thread; every fd into its namespace is closed before it returns."""
    from .detached import run_chains

    k = ctx.backend
    clones: dict[str, Fd] = {}
    scratch: Fd | None = None
    try:
        # Still in the caller's namespace: before 6.15 open_tree clones a mount of ours only.
        for name, root in rootset.items():
            clones[name] = k.open_tree(root.fileno(), "", _CLONE_TREE)
        unshare(CloneFlag.NEWNS)
        # The new namespace's copies of shared mounts are peers of the caller's:
        # private first, or what we attach would propagate back out.
        make_mounts_private()
        fs = k.fsopen("tmpfs")
        try:
            k.fsconfig_set_string(fs.fileno(), "source", "mountplan-detached")
            k.fsconfig_create(fs.fileno())
            scratch = k.fsmount(fs.fileno())
        finally:
            fs.close()
        assert scratch is not None
        k.move_mount(scratch.fileno(), "", AT_FDCWD, "/", MoveMountFlag.F_EMPTY_PATH, shown_target="/ (helper namespace)")
        trees: dict[str, RootHandle] = {}
        for i, (name, clone) in enumerate(clones.items()):
            k.mkdirat(scratch.fileno(), str(i), 0o700, shown=f"scratch/{i}")
            k.move_mount(clone.fileno(), "", scratch.fileno(), str(i), MoveMountFlag.F_EMPTY_PATH, shown_target=f"{name}:")
            set_attrs(ctx, clone.fileno(), propagation=KernelPropagation.PRIVATE, recursive=True, shown=f"{name}:")
            trees[name] = RootHandle(name, clone.fileno(), rootset[name].identity, owned=False)
        run_chains(ctx, plan, compiled, RootSet(trees), detached_tree=False, progress=progress)
        out: dict[str, Fd] = {}
        try:
            for name, clone in clones.items():
                out[name] = k.open_tree(clone.fileno(), "", _CLONE_TREE)
        except BaseException:
            for fd in out.values():
                fd.close()
            raise
        return out
    finally:
        progress.close_all()
        for fd in clones.values():
            fd.close()
        if scratch is not None:
            scratch.close()
