"""Instances whose mount namespace is gone: their mounts died with it, what they made on the roots did not.

``mountplan run --unshare`` (or a worker's ``run`` request) killed with SIGKILL
leaves its instance behind, written in a mount namespace that no longer exists.
Its mounts went with the namespace; the mountpoints it created in a root and its
planned objects there are still on that filesystem, and ordinary recovery
refuses the instance (the mount ids it records name nothing here).

Such an instance is tidied only when the kernel confirms the namespace is gone
(its never-reused 64-bit id, same boot, asked with listmount: 6.11+, and only
after the same question about our own namespace is answered) and nobody holds
its lock. Then everything it created is removed if it is provably ours, exactly
as destroy and rollback prove it (device, inode, birth time, kind, link text);
whatever is not is left alone and reported, and the instance's files go.
"""

from __future__ import annotations

from typing import Any

from mountplan._kernel.statmount import mount_namespace_exists
from mountplan.errors import MountplanError

from .context import Context
from .destroy import remove_objects
from .recovery import FINISH_OPS, pending, reopen_roots, undo_one
from .removal import remove_created
from .roots import RootSet
from .scope import Scope, current_scope
from .state import StateStore

__all__ = ["is_gone", "recover_gone", "tidy_gone"]

#: What died with the namespace: nothing of it can be reached or undone from here.
_IN_THE_NAMESPACE = frozenset({"mount", "update"})


def recover_gone(ctx: Context, state_dir: str, lock_timeout: float, log: Any) -> tuple[list[str], list[str]]:
    """Tidy every instance in ``state_dir`` whose mount namespace is gone; (undone, leftovers)."""
    now = current_scope()
    undone: list[str] = []
    leftovers: list[str] = []
    for info in StateStore.scan(state_dir):
        if info.foreign is None:
            continue  # ours: ordinary recovery
        scope = StateStore(state_dir, info.key).recorded_scope()
        if scope is None or not is_gone(scope, now):
            continue
        store = StateStore(state_dir, info.key, scope=scope)
        try:
            with store.locked(lock_timeout):  # held: a live owner after all
                done, left = tidy_gone(ctx, store, log)
        except MountplanError as exc:
            leftovers.append(f"{info.key}: {exc}")
            continue
        undone += done
        leftovers += left
    return undone, leftovers


def is_gone(scope: Scope, now: Scope) -> bool:
    """True only when the kernel confirms that ``scope``'s mount namespace (same boot) no longer exists."""
    if scope.boot_id != now.boot_id or scope.mntns_id is None or now.mntns_id is None:
        return False
    if scope.mntns_id == now.mntns_id or mount_namespace_exists(now.mntns_id) is not True:
        return False  # the probe does not work here (old kernel, a filter): it proves nothing
    return mount_namespace_exists(scope.mntns_id) is False


def tidy_gone(ctx: Context, store: StateStore, log: Any) -> tuple[list[str], list[str]]:
    """Remove what the instance in ``store`` (opened with its recorded scope, lock held) made; (undone, leftovers)."""
    contents = store.journal_load()
    state = store.load()
    entries = list(contents.entries)
    header = next((e for e in entries if e.get("op") == "begin"), None)
    roots = reopen_roots({"roots": state.roots} if state is not None else header)
    plan = state.plan if state is not None else str((header or {}).get("plan", store.key))
    ilog = log.bind(state=store.key, plan=plan)
    undone: list[str] = []
    leftovers = [f"{store.journal_path} line {m.line}: {m.reason}" for m in contents.malformed]
    try:
        if entries and not any(e.get("op") in FINISH_OPS for e in entries):
            # An apply in flight: what it made is in the journal, not yet in the state.
            _, items, bad = pending(entries)
            leftovers += bad
            for item in sorted(items.values(), key=lambda i: i.seq, reverse=True):
                if item.op in _IN_THE_NAMESPACE:
                    continue
                root = roots.get(item.root)
                if root is None:
                    leftovers.append(f"{item.describe()}: root {item.root!r} is gone or changed")
                    continue
                try:
                    undo_one(ctx, item, root, ilog)
                    undone.append(item.describe())
                except (MountplanError, OSError) as exc:
                    leftovers.append(f"{item.describe()}: {exc}")
        if state is not None:
            kept: list[str] = []
            removed: list[str] = []
            remove_objects(ctx, state, RootSet(roots), ilog, removed, kept)
            undone += [f"object {name!r}" for name in removed]
            leftovers += kept
            for managed in reversed(state.mounts):
                root = roots.get(managed.root)
                if root is None:
                    leftovers.append(f"mountpoints of {managed.name!r}: root {managed.root!r} is gone or changed")
                    continue
                remove_created(ctx, managed.created, root, ilog)
                undone.append(f"mountpoints of {managed.name!r}")
    finally:
        for handle in roots.values():
            handle.close()
    store.journal_close(remove=False)
    store.remove_files()
    ilog.info("recover.namespace_gone", undone=len(undone), left=len(leftovers))
    return [f"{u} of {plan!r} (its mount namespace is gone)" for u in undone], leftovers
