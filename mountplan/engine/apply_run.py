"""One apply under the lock: updates in place, removals innermost first, then every new mount in order, all in one transaction."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mountplan._log import EventLogger, structured_logger
from mountplan.changes import Action, ChangeSet
from mountplan.compiler import CompiledPlan, Step
from mountplan.errors import BusyError, ExecutionError, MountplanError
from mountplan.livetable import LiveTable, read_live_table
from mountplan.model import Plan

from .attach import Attacher, Handles
from .destroy import remove_managed
from .fingerprint import fingerprint
from .privateroot import make_roots_private
from .recovery import rollback
from .results import ApplyResult
from .roots import RootSet
from .state import ManagedMount, ManagedObject, State, StateStore
from .transaction import Transaction
from .update import update_in_place

if TYPE_CHECKING:
    from .executor import Engine
    from .objects import ObjectMaker

_stdlib_log = logging.getLogger("mountplan")
#: Filesystems whose content lives in their superblock alone: a new one per fsopen, gone with its last mount.
_VOLATILE = frozenset({"tmpfs", "ramfs"})
_events: EventLogger = structured_logger(_stdlib_log)


def _enabled(level: int) -> bool:
    # structlog renders an event before stdlib drops it; per-step events would
    # cost more than the syscalls they describe, so check the level first.
    return _stdlib_log.isEnabledFor(level)


def apply_locked(
engine: Engine,
    plan: Plan,
    compiled: CompiledPlan,
    rootset: RootSet,
    store: StateStore,
    state: State,
    prune: bool = False,
    planned: tuple[ChangeSet, LiveTable] | None = None,
) -> ApplyResult:
    """Carry out the changes (computed now unless ``planned`` gives them and the table they came from)."""
    plog = _events.bind(plan=plan.name)
    if planned is None:
        live = read_live_table(beneath=engine.root_dirs(rootset))
        changes = engine._diff(plan, rootset, state, prune=prune, live=live)
    else:
        changes, live = planned
    if changes.problems:
        # Known before anything runs (something foreign at a planned object's
        # path, a blocked path): acting first would only end in a rollback.
        raise ExecutionError(
            f"apply {plan.name!r} refused before changing anything: " + "; ".join(changes.problems)
        )
    unchanged = [c.mount for c in changes.changes if c.action is Action.NOOP]
    for foreign in changes.foreign:
        plog.warning("foreign_mount", mount_point=foreign.mount_point, near=foreign.near)
    if changes.kept:
        plog.info("apply.kept", mounts=[c.mount for c in changes.kept], hint="apply --prune removes them")
    private_ok = all(engine._root_bind_ok(state, rootset, r.name) for r in plan.roots if r.private and r.name in rootset)
    if not changes.has_changes and private_ok:
        plog.info("apply.done", created=0, replaced=0, updated=0, pruned=0, unchanged=len(unchanged))
        return ApplyResult(plan.name, (), tuple(unchanged), (), store.state_path)

    replaced: list[str] = []
    updated: list[str] = []
    pruned: list[str] = []
    todo: list[str] = []
    by_name = {c.mount: c for c in changes.changes}
    specs = {m.name: m for m in plan.mounts}
    managed_by_name = {m.name: m for m in state.mounts}
    new_prints: list[tuple[ManagedMount, str]] = []
    objects = {o.name: o for o in plan.objects}
    objects_made: list[ManagedObject] = []

    tx = Transaction.begin(store, {"plan": plan.name, "roots": engine._root_json(rootset)})
    attacher = Attacher(engine.ctx, tx, rootset, live, ours={m.mnt_id for m in state.mounts})
    root_binds: list[ManagedMount] = []
    all_handles: list[Handles] = []
    made: list[ManagedMount] = []
    current: Step | None = None
    where = ("?", "?")  # (step id, what it does) for the error message
    debug, info = _enabled(logging.DEBUG), _enabled(logging.INFO)
    try:
        root_binds = make_roots_private(engine.ctx, tx, plan, rootset, state)
        attacher.ours.update(m.mnt_id for m in root_binds)
        # First fix or remove what exists, in mount order (a parent's
        # propagation is right before anything is mounted beneath it).
        # Updates are journaled and undone on failure; an unmount cannot be
        # undone, so a removal is committed to the state at once.
        for name in compiled.mount_order:
            change = by_name[name]
            if name in objects:
                if change.action is Action.UPDATE:
                    where = (f"{name}:update", "fix in place: " + ", ".join(f.field for f in change.fields))
                    from .object_ops import update_object  # planned objects only

                    update_object(engine.ctx, tx, rootset[objects[name].root], objects[name], state.object(name))
                    plog.info("object.updated", object=name, fields=[f.field for f in change.fields])
                    updated.append(name)
                elif change.action in {Action.CREATE, Action.REPLACE}:
                    todo.append(name)
                continue
            managed = managed_by_name.get(name)
            if change.action is Action.UPDATE and managed is not None:
                spec = specs[name]
                where = (f"{name}:update", "update in place: " + ", ".join(f.field for f in change.fields))
                update_in_place(engine.ctx, tx, spec, rootset[spec.root], change, live)
                plog.info("mount.updated", mount=spec.name, fields=sorted({f.field.split(".")[0] for f in change.fields}))
                new_prints.append((managed, fingerprint(spec)))
                updated.append(name)
            elif change.action in {Action.CREATE, Action.REPLACE}:
                todo.append(name)
        # Replaced mounts go innermost first (a cascade replaces a parent and
        # the mounts beneath it), then everything is made again in mount order.
        for name in reversed(todo):
            if name in objects:
                if state.has_object(name):
                    where = (f"{name}:unlinkat", "remove before replacing")
                    from .object_ops import forget_or_remove_object

                    replaced += forget_or_remove_object(engine.ctx, state, name, by_name[name].action, rootset, plog)
                    store.save(state)
                continue
            managed = managed_by_name.get(name)
            if managed is None:
                continue
            if by_name[name].action is Action.REPLACE:
                where = (f"{name}:unmount", "unmount before replacing")
                remove_managed(engine.ctx, managed, rootset, plog)
                replaced.append(name)
            state.mounts.remove(managed)
            store.save(state)
        for change in changes.changes:
            if change.action is Action.DELETE and state.has_object(change.mount):
                where = (f"{change.mount}:unlinkat", "remove object (prune)")
                from .object_ops import prune_object

                prune_object(engine.ctx, state, change.mount, rootset, plog)
                store.save(state)
                pruned.append(change.mount)
                continue
            managed = managed_by_name.get(change.mount) if change.action is Action.DELETE else None
            if managed is not None:
                where = (f"{change.mount}:unmount", "unmount (prune)")
                remove_managed(engine.ctx, managed, rootset, plog)
                state.mounts.remove(managed)
                store.save(state)
                pruned.append(change.mount)
        # Objects' code is imported only by plans that have objects (start-up of every run).
        object_maker: ObjectMaker | None = None
        if objects:
            from .objects import ObjectMaker

            object_maker = ObjectMaker(engine.ctx, tx, rootset)
        for name in todo:
            if object_maker is not None and name in objects:
                obj = objects[name]
                from .objects import ObjectHandles

                object_handles = ObjectHandles()
                try:
                    for step in compiled.chain(name):
                        current = step
                        object_maker.run_step(step, obj, object_handles)
                finally:
                    object_handles.close()
                objects_made.append(object_maker.managed(obj, object_handles))
                if info:
                    plog.info("object.created", object=name, path=f"{obj.root}:{obj.path}", kind=obj.kind.value)
                continue
            spec = specs[name]
            handles = Handles()
            all_handles.append(handles)
            mlog = plog.bind(mount=name) if debug else plog
            for step in compiled.chain(name):
                current = step
                if debug:
                    mlog.debug("step", step=step.id, kind=step.kind.value)
                attacher.run_step(step, spec, handles)
            handles.close()
            made.append(
                ManagedMount(
                    name=name, root=spec.root, target=spec.target, mnt_id=handles.mnt_id, unique=handles.unique,
                    fingerprint=fingerprint(spec), created=handles.created,
                    recursive=spec.bind is not None and spec.bind.recursive, submounts=handles.submounts,
                    proof=handles.proof, idmap=handles.idmap, volatile=spec.bind is None and spec.fs_type in _VOLATILE,
                )
            )
            if info:
                mlog.info("mount.created", mount=name, target=f"{spec.root}:{spec.target}", mnt_id=handles.mnt_id)
    except BaseException as exc:
        for handles in all_handles:
            handles.close()
        attacher.close()
        leftovers = rollback(engine.ctx, tx, rootset, plog)
        tx.close(remove=not leftovers)
        if current is not None:
            where = (current.id, current.render())
        cause = str(exc) if isinstance(exc, MountplanError | OSError) else repr(exc)
        message = (
            f"apply {plan.name!r} failed at step {where[0]} ({where[1]}): {cause}. "
            + ("Everything it had done was undone." if not leftovers else "Rollback was incomplete.")
            + (f" Already removed (an unmount cannot be undone): {', '.join(replaced + pruned)}." if replaced or pruned else "")
        )
        plog.debug("apply.failed", step=where[0], error=cause, leftovers=leftovers)  # raised below: the catcher reports it
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if isinstance(exc, BusyError):
            raise BusyError(message, step=where[0], holders=exc.holders, leftovers=leftovers) from exc
        raise ExecutionError(message, step=where[0], leftovers=leftovers) from exc
    attacher.close()
    for managed, print_ in new_prints:
        managed.fingerprint = print_
    state.mounts[:0] = root_binds  # first in, last out: destroy removes them after everything beneath
    state.mounts.extend(made)
    state.objects.extend(objects_made)
    store.save(state)
    tx.close(remove=True)
    plog.info("apply.done", created=len(todo) - len(replaced), replaced=len(replaced), updated=len(updated),
              pruned=len(pruned), unchanged=len(unchanged))
    created = tuple(n for n in todo if n not in replaced)
    return ApplyResult(
        plan.name, created, tuple(unchanged), tuple(replaced), store.state_path, tuple(updated), tuple(pruned)
    )
