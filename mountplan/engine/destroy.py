"""Destroy: unmount every mount a plan instance made, innermost first, and remove its mountpoints."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from mountplan.errors import BusyError, ExecutionError, MountplanError, RootError

from .context import Context
from .removal import CoveredError, Outcome, remove_created, remove_mount
from .roots import RootSet
from .state import ManagedMount, State, StateStore
from .unmount import ForeignMountError


@dataclass(frozen=True, slots=True)
class DestroyResult:
    """What destroy did: mounts and objects removed, those already gone, and objects left alone (why)."""

    plan: str
    removed: tuple[str, ...]
    already_gone: tuple[str, ...]
    #: objects not removed because they are no longer what apply made (or are not empty), each with why
    kept: tuple[str, ...] = ()


def remove_managed(
    ctx: Context, managed: ManagedMount, rootset: RootSet, log: Any,
    *, defer: Collection[str] = (),
) -> tuple[Outcome, list[dict[str, Any]]]:
    """Unmount one managed mount (wherever it is now) and remove the mountpoints made for it.

    The mountpoints whose paths are in ``defer`` are not removed but returned (in
    the order made), for a caller that unmounts the filesystem holding them next.
    """
    root = rootset.get(managed.root)
    if root is None:
        raise RootError(f"root {managed.root!r} is needed to remove mount {managed.name!r}")
    outcome = remove_mount(
        ctx, root, managed.target, managed.mnt_id, managed.unique,
        recursive=managed.recursive, submounts=managed.submounts, label=managed.name, proof=managed.proof,
    )
    if outcome is Outcome.GONE:
        log.warning("destroy.gone", mount=managed.name, target=f"{managed.root}:{managed.target}")
    else:
        log.info("mount.removed", mount=managed.name, target=f"{managed.root}:{managed.target}")
    created, deferred = managed.created, []
    if defer:
        deferred = [item for item in created if str(item["path"]) in defer]
        created = [item for item in created if str(item["path"]) not in defer]
    remove_created(ctx, created, root, log)
    return outcome, deferred


def _holder(root: str, path: str, pending: dict[tuple[str, str], ManagedMount]) -> ManagedMount | None:
    """The innermost of ``pending`` (mounts this destroy removes afterwards) that ``root:path`` lies in."""
    parent = path.rpartition("/")[0]
    while parent:
        found = pending.get((root, parent))
        if found is not None:
            return found
        parent = parent.rpartition("/")[0]
    return None


def _beneath(inner: ManagedMount, outer: ManagedMount) -> bool:
    return inner.root == outer.root and inner.target.startswith(outer.target + "/")


def _remove_objects(
    ctx: Context, state: State, rootset: RootSet, log: Any, removed: list[str], kept: list[str],
    within: ManagedMount | None = None,
) -> None:
    """Remove the state's objects (newest first), or only those in mount ``within`` (before it goes).

    An object that is no longer what apply made is reported and forgotten; one
    that is covered or not empty is reported and stays in the state.
    """
    for index in range(len(state.objects) - 1, -1, -1):  # newest first; deleting behind us is safe
        obj = state.objects[index]
        if within is not None and (obj.root != within.root or within.target and not obj.path.startswith(within.target + "/")):
            continue
        root = rootset.get(obj.root)
        if root is None:
            raise RootError(f"root {obj.root!r} is needed to remove object {obj.name!r}")
        from .object_ops import remove_object  # planned objects only: not on every run's import path

        outcome = remove_object(ctx, root, obj, log)
        if outcome is None:
            removed.append(obj.name)
        else:
            why, still_ours = outcome
            log.warning("destroy.kept_object", object=obj.name, reason=why)
            kept.append(why)
            if still_ours:
                continue
        del state.objects[index]


def _remove_deferred(
    ctx: Context, items: list[dict[str, Any]], holder: ManagedMount, rootset: RootSet, log: Any
) -> None:
    """``holder`` stays mounted: remove the mountpoints made on it after all, as if never deferred."""
    root = rootset.get(holder.root)
    if items and root is not None:
        remove_created(ctx, items, root, log)


def _flush_deferred(
    ctx: Context, deferred: dict[str, list[dict[str, Any]]], order: list[ManagedMount], rootset: RootSet, log: Any
) -> None:
    """Destroy stopped early: the mounts still holding deferred mountpoints stay, so remove those now.

    Best effort, as the error that stopped destroy is the one to report.
    """
    for holder in order:
        items = deferred.pop(holder.name, [])
        try:
            _remove_deferred(ctx, items, holder, rootset, log)
        except (MountplanError, OSError) as exc:
            log.warning("destroy.kept_mountpoint", path=f"{holder.root}:{holder.target}", reason=str(exc))


def destroy_locked(ctx: Context, plan_name: str, state: State, rootset: RootSet, store: StateStore, log: Any) -> DestroyResult:
    """Remove the state's mounts, newest first; the state is saved after every outcome.

    A mount covered by a foreign one is kept (with every mount it lies beneath)
    and reported at the end as an error: it is never forgotten.
    """
    plog = log.bind(plan=plan_name)
    removed: list[str] = []
    gone: list[str] = []
    kept: list[ManagedMount] = []
    covered: list[str] = []
    kept_objects: list[str] = []
    managed: ManagedMount | None = None
    # Mountpoints made in a tmpfs or ramfs of ours that this destroy unmounts
    # afterwards (the device files on a /dev tmpfs) go with that filesystem:
    # removing them one by one first would only be undone by the unmount. Only
    # a volatile mount qualifies (what a bind or a disk filesystem holds stays
    # after its unmount); if it stays (covered, kept, busy, destroy stopped),
    # they are removed as before, so the end state is the same.
    deferred: dict[str, list[dict[str, Any]]] = {}
    order = list(reversed(state.mounts))
    pending = {(m.root, m.target): m for m in state.mounts if m.target}
    try:
        for managed in order:
            pending.pop((managed.root, managed.target), None)
            if any(_beneath(k, managed) for k in kept):
                kept.append(managed)
                _remove_deferred(ctx, deferred.pop(managed.name, []), managed, rootset, plog)
                continue
            if state.objects:
                # What lies in a mount goes before it (an object in it would vanish unchecked).
                _remove_objects(ctx, state, rootset, plog, removed, kept_objects, within=managed)
            holders = {
                str(item["path"]): holder for item in managed.created
                if (holder := _holder(managed.root, str(item["path"]), pending)) is not None and holder.volatile
            }
            try:
                outcome, later = remove_managed(ctx, managed, rootset, plog, defer=holders.keys())
            except ForeignMountError as exc:
                kept.append(managed)
                covered.append(str(exc))
                _remove_deferred(ctx, deferred.pop(managed.name, []), managed, rootset, plog)
                continue
            for name in {holders[str(item["path"])].name for item in later}:
                # Prepended: remove_created goes from the end, so what a mount made later
                # (possibly inside what an earlier one made) goes first.
                mine = [item for item in later if holders[str(item["path"])].name == name]
                deferred[name] = mine + deferred.get(name, [])
            # Our mount is gone, and what it held went with it.
            deferred.pop(managed.name, None)
            (removed if outcome is Outcome.REMOVED else gone).append(managed.name)
            state.mounts.remove(managed)
        managed = None
        if state.objects:
            _remove_objects(ctx, state, rootset, plog, removed, kept_objects)
    except MountplanError as exc:
        _flush_deferred(ctx, deferred, order, rootset, plog)
        store.save(state)
        if isinstance(exc, BusyError):
            assert managed is not None
            raise BusyError(
                f"destroy {plan_name!r} stopped: {exc}", step=f"{managed.name}#00:unmount",
                holders=exc.holders, leftovers=[m.name for m in state.mounts],
            ) from exc
        raise
    except OSError as exc:
        _flush_deferred(ctx, deferred, order, rootset, plog)
        store.save(state)
        where = managed.name if managed is not None else "?"
        raise ExecutionError(f"destroy {plan_name!r} stopped at {where!r}: {exc}") from exc
    store.save(state)
    if covered:
        plog.warning("destroy.kept", mounts=[m.name for m in kept])
        error = CoveredError if all("covered" in c for c in covered) else ForeignMountError
        raise error(
            f"destroy {plan_name!r}: {len(removed)} removed, {len(kept)} kept in the state: " + "; ".join(covered),
            leftovers=[m.name for m in kept],
        )
    plog.info("destroy.done", removed=len(removed), already_gone=len(gone), kept_objects=len(kept_objects))
    return DestroyResult(plan_name, tuple(removed), tuple(gone), tuple(kept_objects))
