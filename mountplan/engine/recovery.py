"""Undo: roll back a failed apply in reverse order, and recover what a killed run left in its journal.

Both carry on past a failed undo and report every leftover. Recovery acts only
beneath a root the journal's header pins by device and inode, and only on a
mount the journal proves is ours (its id, seen at the path it was attached to).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mountplan.errors import ExecutionError

from .context import Context
from .destroy import destroy_locked
from .removal import remove_mount, remove_path
from .roots import RootHandle, RootIdentity, RootSet, reopen_root
from .state import StateStore
from .transaction import UNDOABLE, Transaction, Undo, created_entry
from .update import restore


def undo_one(ctx: Context, item: Undo, root: RootHandle, log: Any) -> None:
    """Undo one journaled change. A mount of ours covered by a foreign one raises (and is kept)."""
    if item.op == "update":
        restore(ctx, item, root)
    elif item.op == "mount":
        remove_mount(ctx, root, item.path, item.mnt_id, item.unique,
                     recursive=item.recursive, submounts=item.submounts, label=item.mount, proof=item.proof)
    elif item.op == "chmod":
        from .object_ops import restore_object  # planned objects only

        restore_object(ctx, item, root, log)
    else:
        remove_path(ctx, root, item.op, item.path, item.dev, item.ino, link=item.link, btime=item.btime, since=item.since)


def rollback(ctx: Context, tx: Transaction, roots: Mapping[str, RootHandle], log: Any) -> list[str]:
    """Undo ``tx``'s changes, newest first; return what could not be undone."""
    failed: list[tuple[Undo, Exception]] = []
    for item in reversed(tx.undo):
        try:
            undo_one(ctx, item, roots[item.root], log)
            tx.undone(item)
        except Exception as first:  # noqa: BLE001 - carry on: report every leftover, not just the first
            failed.append((item, first))
    # A directory the kernel filled (overlay makes <workdir>/work) may sit on a
    # mount this rollback has since removed: retry once, now that it may be gone.
    leftovers: list[str] = []
    for item, error in failed:
        reason: Exception = error
        if item.op != "mount":
            try:
                undo_one(ctx, item, roots[item.root], log)
                tx.undone(item)
                continue
            except Exception as again:  # noqa: BLE001 - reported as a leftover
                reason = again
        leftovers.append(f"{item.describe()}: {reason}")
        log.warning("rollback.failed", item=item.describe(), error=str(reason))
    return leftovers


def pending(entries: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[int, Undo], list[str]]:
    """The header, the changes not yet undone, and the lines too malformed to act on."""
    header = next((e for e in entries if e.get("op") == "begin"), None)
    since = (header or {}).get("since")
    since = since if type(since) is int else None
    items: dict[int, Undo] = {}
    bad: list[str] = []
    for e in entries:
        op = e.get("op")
        try:
            if op in UNDOABLE:
                item = Undo.from_entry(e)
                item.since = since
                items[item.seq] = item
            elif op in {"created", "undone"}:
                ref = items.get(int(e["ref"]))
                if ref is None:
                    continue
                if op == "created":
                    btime = e.get("btime")
                    ref.dev, ref.ino, ref.btime = int(e["dev"]), int(e["ino"]), None if btime is None else int(btime)
                else:
                    items.pop(ref.seq, None)
        except (KeyError, TypeError, ValueError) as exc:
            bad.append(f"journal line {str(e)[:200]}: {exc!r}")
    return header, items, bad


def recover_store(ctx: Context, store: StateStore, log: Any, *, raise_on_leftovers: bool = True) -> tuple[list[str], list[str]]:
    """Undo a journal an interrupted run left behind; return (undone, leftovers).

    A journal holding a ``session`` entry was left by ``mountplan run`` killed
    while its command ran, one holding ``destroy`` by a destroy that stopped
    (EBUSY, a covered mount, a kill): the whole committed state is destroyed, as
    they would have done. The caller holds the instance lock, which they held for
    their whole life, so whoever wrote it is gone.
    """
    contents = store.journal_load()
    entries = list(contents.entries)
    if not entries:
        store.journal_close(remove=True)
        return [], [f"{store.journal_path} line {m.line}: {m.reason}" for m in contents.malformed]
    plog = log.bind(state=store.key)
    if any(e.get("op") in FINISH_OPS for e in entries):
        return _finish_session(ctx, store, entries, plog, raise_on_leftovers)
    header, items, bad = pending(entries)
    bad += [f"{store.journal_path} line {m.line}: {m.reason}" for m in contents.malformed]
    roots = _reopen_roots(header)
    undone: list[str] = []
    leftovers: list[str] = list(bad)
    left_items: list[Undo] = []
    store.journal_open({"recover": True, "roots": (header or {}).get("roots", {})})
    try:
        for item in sorted(items.values(), key=lambda i: i.seq, reverse=True):
            root = roots.get(item.root)
            if root is None:
                leftovers.append(f"{item.describe()}: root {item.root!r} is gone or changed")
                left_items.append(item)
                continue
            try:
                undo_one(ctx, item, root, plog)
                undone.append(item.describe())
                plog.info("recover.undone", item=item.describe())
            except Exception as exc:  # noqa: BLE001 - recover goes on; the leftover is reported
                leftovers.append(f"{item.describe()}: {exc}")
                left_items.append(item)
    finally:
        for handle in roots.values():
            handle.close()
        store.journal_close(remove=False)
    if left_items or bad:
        # Keep only the items still to undo, so the next recover retries them.
        _rewrite_journal(store, header, left_items)
    else:
        store.journal_close(remove=True)
    if leftovers and raise_on_leftovers:
        raise ExecutionError("an earlier run was interrupted and its changes could not all be undone", leftovers=leftovers)
    return undone, leftovers


def _reopen_roots(header: dict[str, Any] | None) -> dict[str, RootHandle]:
    """The roots a journal header pins, each reopened only if it is still the same inode."""
    roots: dict[str, RootHandle] = {}
    for name, ident in ((header or {}).get("roots") or {}).items():
        try:
            identity = RootIdentity(str(ident["path"]), int(ident["dev"]), int(ident["ino"]))
        except (KeyError, TypeError, ValueError):
            continue
        handle = reopen_root(str(name), identity)
        if handle is not None:
            roots[str(name)] = handle
    return roots


#: Journal entries that mean "destroy everything in the state" to recovery.
FINISH_OPS = frozenset({"session", "destroy"})


def describe_pending(store: StateStore) -> tuple[tuple[str, ...], frozenset[int]]:
    """What recover would do with the journal left behind (read only), and the mount ids it names."""
    contents = store.journal_load()
    entries = list(contents.entries)
    if not entries:
        return (), frozenset()
    if any(e.get("op") in FINISH_OPS for e in entries):
        return ("destroy every mount in the state (a destroy or a run did not finish)",), frozenset()
    _, items, bad = pending(entries)
    undo = sorted(items.values(), key=lambda i: i.seq, reverse=True)
    return tuple(f"undo {i.describe()}" for i in undo) + tuple(bad), frozenset(i.mnt_id for i in undo if i.op == "mount")


def is_unfinished_destroy(store: StateStore) -> bool:
    """The journal asks for the whole state to be destroyed (a destroy or a run that did not finish)."""
    return any(e.get("op") in FINISH_OPS for e in store.journal_load().entries)


def _finish_session(
    ctx: Context, store: StateStore, entries: list[dict[str, Any]], log: Any, raise_on_leftovers: bool
) -> tuple[list[str], list[str]]:
    """Destroy what a killed ``run`` left mounted (its committed state), then drop its journal."""
    header = next((e for e in entries if e.get("op") == "begin"), None)
    state = store.load()
    if state is None:
        store.journal_close(remove=True)
        return [], []
    roots = _reopen_roots(header)
    try:
        result = destroy_locked(ctx, state.plan, state, RootSet(roots), store, log)
    except Exception as exc:
        if raise_on_leftovers:
            raise
        return [], [f"mounts of the killed run of {state.plan!r}: {exc}"]
    finally:
        for handle in roots.values():
            handle.close()
    store.journal_close(remove=True)
    log.info("recover.session", plan=state.plan, removed=len(result.removed))
    return [f"mount {name!r} of a killed run of {state.plan!r}" for name in result.removed], []


def _rewrite_journal(store: StateStore, header: dict[str, Any] | None, items: list[Undo]) -> None:
    store.journal_close(remove=True)
    store.journal_open({k: v for k, v in (header or {}).items() if k not in {"op", "seq"}})
    for item in sorted(items, key=lambda i: i.seq):
        seq = store.journal_write(item.to_entry())
        if item.ino:
            store.journal_write(created_entry(seq, item.dev, item.ino, item.btime))
    store.journal_close(remove=False)
