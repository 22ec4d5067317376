"""Build a plan's mounts as a detached tree: in no mount table, ended by closing its fd.

Each root the plan uses becomes a detached copy of itself (``open_tree`` with
``OPEN_TREE_CLONE|AT_RECURSIVE``, made private at once so nothing made inside
propagates back to the root's peers); every planned mount is built with the
compiler's steps and moved beneath that copy, resolved from the copy's fd like
any target beneath a root. How it is moved there depends on the kernel
(:class:`Mechanism`): Linux 6.15 lets move_mount attach a mount beneath another
detached mount; older kernels build the tree attached in a throwaway private
mount namespace of a helper thread and hand back a recursive detached clone of
it (:mod:`.detached_fallback`).

There is no state file and no journal: nothing is in any mount table, so
nothing can be left behind by a crash: when the last fd of the tree closes
(ours, or the process's at exit), the kernel dissolves every mount in it. The
only things a tree writes outside itself are missing mountpoints and planned
objects in a root's own filesystem (those inside the tree's mounts go with it);
:meth:`DetachedTree.close` removes them, checked by inode, beneath the root,
after the tree is closed.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, cast

from mountplan._kernel import Fd, MoveMountFlag, OpenTreeFlag, detect
from mountplan._kernel import Propagation as KernelPropagation
from mountplan._kernel.emulation import active_profile
from mountplan._log import EventLogger, structured_logger
from mountplan.compiler import CompiledPlan, Step
from mountplan.errors import ExecutionError, KernelError, MountplanError
from mountplan.livetable import LiveTable, TableSource
from mountplan.model import ObjectKind, ObjectSpec, Plan

from .attach import Attacher, Handles
from .attrs import has_mount_setattr, required_for, set_attrs
from .context import Context
from .detached_steps import TreeSteps
from .fingerprint import compiled_for
from .objects import ObjectHandles, ObjectMaker
from .preflight import require_overlay_keys
from .removal import remove_created
from .roots import RootHandle, RootSet, open_roots, root_paths, roots_used
from .state import StateStore
from .transaction import Transaction

__all__ = ["DetachedTree", "Mechanism", "build_detached", "moves_between_detached"]

_stdlib_log = logging.getLogger("mountplan")
_events: EventLogger = structured_logger(_stdlib_log)

_CLONE_TREE = OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC | OpenTreeFlag.RECURSIVE | OpenTreeFlag.EMPTY_PATH
_NO_TABLE = LiveTable(mounts=(), source=TableSource.MOUNTINFO)


class Mechanism(enum.Enum):
    """How the tree's mounts are joined (docs/detached.md)."""

    #: move_mount between detached mounts (Linux 6.15+): no mount namespace is involved at all
    DETACHED_MOVES = "detached-moves"
    #: built attached in a helper thread's throwaway private mount namespace, then cloned out (5.2+)
    PRIVATE_NAMESPACE = "private-namespace"


class DetachedTree:
    """A plan's mounts as detached trees, one per root; the fds are the only way in.

    ``fileno()`` is the root of the tree of the plan's one target root (``fd(name)``
    for a plan that places mounts in several). Use it as a dirfd (``openat``,
    ``execveat``, ``fchdir`` + ``chroot``), as ``/proc/self/fd/N/...`` (:meth:`path`),
    or attach it yourself with ``move_mount``. :meth:`close` (or leaving the
    ``with`` block) closes every fd and removes the mountpoints made in the roots.
    """

    __slots__ = ("_created", "_ctx", "_origins", "_targets", "_trees", "mechanism", "plan_name")

    def __init__(
        self, plan_name: str, mechanism: Mechanism, trees: dict[str, Fd], targets: tuple[str, ...],
        origins: dict[str, RootHandle], created: list[tuple[str, dict[str, Any]]], ctx: Context,
    ) -> None:
        #: The plan the tree was built from.
        self.plan_name: str = plan_name
        #: How the kernel joined its mounts.
        self.mechanism: Mechanism = mechanism
        self._trees = trees
        self._targets = targets
        self._origins = origins
        self._created = created
        self._ctx = ctx

    @property
    def roots(self) -> tuple[str, ...]:
        """The names of the roots that have a tree (every root the plan uses), sorted."""
        return tuple(sorted(self._trees))

    def fd(self, root: str) -> int:
        """The fd of the root of ``root``'s tree (still owned by this object)."""
        try:
            return self._trees[root].fileno()
        except KeyError:
            raise KeyError(f"no detached tree for root {root!r} (the plan uses {', '.join(self.roots)})") from None

    def fileno(self) -> int:
        """The fd of the tree of the plan's only target root; ValueError when it places mounts in several."""
        if len(self._targets) != 1:
            raise ValueError(f"plan {self.plan_name!r} places mounts in roots {', '.join(self._targets)}: use fd(name)")
        return self.fd(self._targets[0])

    def path(self, root: str | None = None) -> str:
        """``/proc/self/fd/N`` of a tree's root: a path prefix for this process (and children given the fd)."""
        return f"/proc/self/fd/{self.fileno() if root is None else self.fd(root)}"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return all(fd.closed for fd in self._trees.values())

    def close(self, *, keep_mountpoints: bool = False) -> None:
        """Close the tree, then remove the directories and files it created in the roots.

        Another holder of the tree (a child process inside it, an fd you dup'ed)
        keeps the mounts alive after this; removing a directory that is still a
        mountpoint in such a tree detaches the mount there, so close with
        ``keep_mountpoints=True`` while anything else may still use it.
        Idempotent; the mountpoint cleanup runs once.
        """
        for fd in self._trees.values():
            fd.close()
        created, self._created = self._created, []
        try:
            if not keep_mountpoints:
                left = remove_made(self._ctx, created, self._origins)
                if left:
                    _events.warning("detached.kept", plan=self.plan_name, paths=left)
        finally:
            for origin in self._origins.values():
                origin.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(slots=True)
class BuildProgress:
    """What a build has done so far: the handles of each mount's chain and the step running."""

    handles: list[tuple[str, Handles | ObjectHandles]] = field(default_factory=list)
    step: Step | None = None

    def close_all(self) -> None:
        for _, handles in self.handles:
            handles.close()

    def created(self) -> list[tuple[str, dict[str, Any]]]:
        """(root, item) of every directory or file made, in creation order."""
        return [(root, item) for root, handles in self.handles for item in handles.created]


class _NoJournal:
    """The journal a detached build keeps: numbered entries, written nowhere.

    The tree is in no mount table and ends with its fd, so nothing needs recovery;
    the mountpoints it made are known from the build's handles.
    """

    def __init__(self) -> None:
        self._seq = 0

    def journal_open(self, header: dict[str, Any]) -> None:
        self._seq = 0

    def journal_write(self, entry: dict[str, Any]) -> int:
        self._seq += 1
        return self._seq

    def journal_close(self, *, remove: bool) -> None:
        return None


def run_chains(ctx: Context, plan: Plan, compiled: CompiledPlan, trees: RootSet, *, detached_tree: bool,
               progress: BuildProgress) -> None:
    """Run every planned mount's and object's chain, in the compiler's order, into ``trees`` (root name -> tree root)."""
    tx = Transaction(cast(StateStore, _NoJournal()))
    attacher = Attacher(ctx, tx, trees, _NO_TABLE)
    steps = TreeSteps(attacher, detached_tree)
    objects = ObjectMaker(ctx, tx, trees)
    specs = {m.name: m for m in plan.mounts}
    object_specs = {o.name: o for o in plan.objects}
    try:
        for name in compiled.mount_order:
            progress.step = None  # a failure between chains must not blame the previous one's last step
            obj = object_specs.get(name)
            if obj is not None:
                _run_object(objects, compiled, obj, progress)
                continue
            spec = specs[name]
            handles = Handles()
            progress.handles.append((spec.root, handles))
            for step in compiled.chain(name):
                progress.step = step
                steps.run_step(step, spec, handles)
            handles.close()
    finally:
        attacher.close()  # the user-namespace fds of idmapped binds
    progress.step = None


def _run_object(maker: ObjectMaker, compiled: CompiledPlan, spec: ObjectSpec, progress: BuildProgress) -> None:
    """Make one planned object beneath its tree; what it wrote into a root's own directory is removed on close.

    An object inside one of the tree's mounts goes with the tree; one in the
    root's filesystem (and the directories made for it) is recorded by inode
    like a mountpoint, so :meth:`DetachedTree.close` removes exactly that.
    """
    handles = ObjectHandles()
    progress.handles.append((spec.root, handles))
    try:
        for step in compiled.chain(spec.name):
            progress.step = step
            maker.run_step(step, spec, handles)
    finally:
        if handles.ino:  # made, even if a later step (fchmod) failed
            handles.created.append({"op": _MADE_OP[spec.kind], "path": spec.path, "dev": handles.dev,
                                    "ino": handles.ino, "link": spec.link or ""})
        handles.close()


_MADE_OP = {ObjectKind.DIRECTORY: "mkdir", ObjectKind.FILE: "mkfile", ObjectKind.SYMLINK: "mklink"}


#: The kernel's answer to moves_between_detached, once asked. No lock: two threads
#: racing here both ask the kernel (the probe is idempotent) and store the same answer.
_MOVES: bool | None = None


def moves_between_detached(ctx: Context) -> bool:
    """Whether move_mount attaches a mount beneath a *detached* mount here (Linux 6.15+).

    Asked of the kernel with two throwaway tmpfs mounts that are never attached
    anywhere; the answer is kept. Emulated profiles without unique mount ids
    (scripts/emulate-kernel, kernels before 6.8) answer no without asking: the
    real kernel under the filter would say yes.
    """
    global _MOVES
    if _MOVES is not None:
        return _MOVES
    profile = active_profile()
    if profile is not None and not profile.has_unique_mount_ids:
        return False
    k = ctx.backend
    with _scratch_tmpfs(k) as anchor, _scratch_tmpfs(k) as child:
        k.mkdirat(anchor.fileno(), "m", 0o700, shown="probe")
        try:
            k.move_mount(child.fileno(), "", anchor.fileno(), "m", MoveMountFlag.F_EMPTY_PATH, shown_target="probe")
        except KernelError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _MOVES = False
        else:
            _MOVES = True
    return _MOVES


def _scratch_tmpfs(k: Any) -> Fd:
    fs = k.fsopen("tmpfs")
    try:
        k.fsconfig_set_string(fs.fileno(), "source", "mountplan-probe")
        k.fsconfig_create(fs.fileno())
        mnt: Fd = k.fsmount(fs.fileno())
    finally:
        fs.close()
    return mnt


def build_detached(
    ctx: Context, plan: Plan, roots: Mapping[str, str | int] | None = None, *, mechanism: Mechanism | None = None
) -> DetachedTree:
    """Build ``plan``'s mounts as detached trees; on any failure close everything made and raise.

    Checks that apply makes before any change come first (kernel features, overlay
    keys, roots). ``mechanism`` None picks the best the kernel has.
    """
    from .detached_fallback import build_in_private_namespace, refuse_unbindable

    detect().require()
    detect().require(*required_for(plan))
    require_overlay_keys(plan)
    compiled = compiled_for(plan)
    progress = BuildProgress()
    with open_roots(root_paths(plan, roots), roots_used(plan)) as rootset:
        mech = mechanism or _best_mechanism(ctx)
        if mech is Mechanism.PRIVATE_NAMESPACE:
            refuse_unbindable(plan)
        elif any(m.bind is not None and m.attrs for m in plan.mounts):
            # mount(2) cannot reach a detached mount: a bind's attributes need mount_setattr there.
            detect().require("mount_setattr")
        # Our own fds of the roots: mountpoints are removed beneath them after the
        # tree is gone, even if the caller closed the fd it gave us by then.
        origins = _own_copies(rootset)
        try:
            if mech is Mechanism.DETACHED_MOVES:
                trees = _build_with_moves(ctx, plan, compiled, rootset, progress)
            else:
                trees = build_in_private_namespace(ctx, plan, compiled, rootset, progress)
        except BaseException as exc:
            progress.close_all()
            left = remove_made(ctx, progress.created(), origins)
            for origin in origins.values():
                origin.close()
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            error = _failure(plan, progress.step, exc, left)
            if error is exc:
                raise
            raise error from exc
    targets = tuple(sorted({m.root for m in plan.mounts}))
    _events.info("detached.built", plan=plan.name, mechanism=mech.value, mounts=len(plan.mounts))
    return DetachedTree(plan.name, mech, trees, targets, origins, progress.created(), ctx)


def _best_mechanism(ctx: Context) -> Mechanism:
    """Detached moves where the kernel has them and mount_setattr works (only a seccomp filter takes
    it from a 6.15 kernel, and without it a bind's attributes cannot be set on a detached mount)."""
    if has_mount_setattr() and moves_between_detached(ctx):
        return Mechanism.DETACHED_MOVES
    return Mechanism.PRIVATE_NAMESPACE


def _build_with_moves(ctx: Context, plan: Plan, compiled: CompiledPlan, rootset: RootSet,
                      progress: BuildProgress) -> dict[str, Fd]:
    """Linux 6.15+: clone each root as a private detached tree and move every mount beneath it."""
    k = ctx.backend
    trees: dict[str, Fd] = {}
    try:
        for name, root in rootset.items():
            trees[name] = k.open_tree(root.fileno(), "", _CLONE_TREE)
            # A clone of a shared mount joins its peer group: private before anything
            # is mounted inside, or it would propagate to the root's peers.
            set_attrs(ctx, trees[name].fileno(), propagation=KernelPropagation.PRIVATE, recursive=True, shown=f"{name}:")
        handles = RootSet({n: RootHandle(n, fd.fileno(), rootset[n].identity, owned=False) for n, fd in trees.items()})
        run_chains(ctx, plan, compiled, handles, detached_tree=True, progress=progress)
    except BaseException:
        progress.close_all()
        for fd in trees.values():
            fd.close()
        raise
    return trees


def _own_copies(rootset: RootSet) -> dict[str, RootHandle]:
    """A dup of every root's fd, all or none (a failed dup, EMFILE, closes the ones made)."""
    copies: dict[str, RootHandle] = {}
    try:
        for name, handle in rootset.items():
            raw = os.dup(handle.fileno())
            # Owned at once: from here the fd is closed with the handle.
            copies[name] = RootHandle(name, Fd(raw, f"root:{name}"), handle.identity, owned=True)
            os.set_inheritable(raw, False)
    except BaseException:
        for copy in copies.values():
            copy.close()
        raise
    return copies


def remove_made(ctx: Context, created: list[tuple[str, dict[str, Any]]], origins: Mapping[str, RootHandle]) -> list[str]:
    """Remove what a build created in the roots, newest first; what could not be removed, as ``root:path``.

    Resolved beneath the root itself (the tree is closed by now): an item made
    inside one of the tree's own mounts is not there and is skipped, one that is
    a different inode now is kept.
    """
    left: list[str] = []
    for root, item in reversed(created):
        try:
            remove_created(ctx, [item], origins[root], _events)
        except KernelError as exc:
            left.append(f"{root}:{item['path']} ({exc.errno_name})")
    return left


def _failure(plan: Plan, step: Step | None, exc: BaseException, left: list[str]) -> MountplanError:
    if step is None and isinstance(exc, MountplanError) and not left:
        return exc  # before any mount was made (a root, an unusable kernel): as raised
    cause = str(exc) if isinstance(exc, MountplanError | OSError) else repr(exc)
    where = f" at step {step.id} ({step.render()})" if step is not None else ""
    message = (
        f"detached {plan.name!r} failed{where}: {cause}. Every mount made so far was closed with the tree "
        "(none was in any mount table)"
        + (f"; could not remove {', '.join(left)}" if left else "; the mountpoints it created were removed")
    )
    return ExecutionError(message, step=step.id if step is not None else "", leftovers=left)
