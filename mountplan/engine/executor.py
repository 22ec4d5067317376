"""The Engine: apply, destroy, plan and recover a plan instance, each under its state lock.

The Engine holds configuration only (backend, state directory, timeouts): every
apply gets its own :class:`~.transaction.Transaction`, so one Engine serves
concurrent applies of different plans from several threads. The operations live
in their own modules: attach (create a mount), update (in place), removal and
unmount (proof of ownership), destroy, and recovery (rollback and journals).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mountplan._kernel import detect
from mountplan._kernel.namespaces import in_initial_cgroup_namespace
from mountplan._log import EventLogger, structured_logger
from mountplan.changes import ChangeSet, diff
from mountplan.compiler import CompiledPlan
from mountplan.errors import (
    KernelError,
    LockError,
    PlanError,
)
from mountplan.livetable import LiveTable, read_live_table
from mountplan.model import Plan

from .apply_run import apply_locked
from .attrs import require_features
from .backend import Backend, KernelBackend
from .context import Context
from .destroy import DestroyResult, destroy_locked
from .fingerprint import compiled_for, fingerprint
from .preflight import kernel_problems, require_overlay_keys
from .privateroot import PREFIX, is_root_bind
from .recovery import describe_pending, is_unfinished_destroy, recover_store
from .results import ApplyResult, RecoverResult
from .rootlock import roots_held
from .roots import RootHandle, RootSet, open_roots, resolve_parent, root_paths, roots_used
from .state import ManagedMount, State, StateStore, current_scope, default_state_dir, instance_key
from .unmount import is_ours_at

if TYPE_CHECKING:
    from mountplan._idmap_drift import IdmapEvidence

    # Saved plans are imported where they are used: `run` and `apply PLAN` never need them.
    from .saved import SavedPlan

__all__ = ["ApplyResult", "DestroyResult", "Engine", "RecoverResult", "compiled_for", "fingerprint", "root_paths"]

# Events go through a stdlib logger that nobody configures but the CLI: an
# embedding program sees only warnings (stdlib's last-resort handler) until it
# sets up logging itself. The library never configures structlog.
_stdlib_log = logging.getLogger("mountplan")
_events: EventLogger = structured_logger(_stdlib_log)


def warn_machine_wide(plan: Plan) -> None:
    """Warn before a cgroup2 mount from the initial cgroup namespace: its options change the whole machine."""
    cgroup2 = [m.name for m in plan.mounts if m.fs_type == "cgroup2"]
    if cgroup2 and in_initial_cgroup_namespace():
        _events.warning(
            "cgroup2.machine_wide", mounts=cgroup2,
            hint="a cgroup2 mount from the initial cgroup namespace rewrites the machine-wide cgroup2 options "
            "(nsdelegate, memory_recursiveprot) for every cgroup2 mount; mount it from a new cgroup namespace "
            "(run --unshare) to keep them",
        )


class Engine:
    """Runs plans against the kernel through a backend, with state in ``state_dir``.

    Configuration only: no transaction state lives here, so one Engine may run
    applies of different plans from several threads at once.
    """

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        state_dir: str | None = None,
        lock_timeout: float = 30.0,
        lazy: bool = False,
    ) -> None:
        self.backend: Any = backend if backend is not None else KernelBackend()
        self._state_dir = state_dir
        self.lock_timeout: float = lock_timeout
        self.lazy: bool = lazy
        self.ctx: Context = Context(self.backend, lazy)

    @property
    def state_dir(self) -> str:
        """Where state lives; the default is looked up on first use, so an error in a root
        (checked first) is reported before one about the state directory."""
        if self._state_dir is None:
            self._state_dir = default_state_dir()
        return self._state_dir

    # ================================================================== public

    def apply(
        self,
        plan: Plan,
        roots: Mapping[str, str | int] | None = None,
        *,
        compiled: CompiledPlan | None = None,
        prune: bool = False,
    ) -> ApplyResult:
        """Make every planned mount; undo everything on failure."""
        require_features(plan)
        require_overlay_keys(plan)
        warn_machine_wide(plan)
        compiled = compiled or compiled_for(plan)
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            with store.locked(self.lock_timeout), roots_held(rootset, self.lock_timeout):
                recover_store(self.ctx, store, _events)
                state = self._load_or_new(store, plan, rootset)
                return apply_locked(self, plan, compiled, rootset, store, state, prune)

    def destroy(self, plan: Plan, roots: Mapping[str, str | int] | None = None) -> DestroyResult:
        """Unmount every mount this plan instance made, innermost first, and remove its mountpoints."""
        detect().require()
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            with store.locked(self.lock_timeout), roots_held(rootset, self.lock_timeout):
                if not is_unfinished_destroy(store):  # else this destroy is exactly what finishes it
                    recover_store(self.ctx, store, _events)
                state = store.load()
                if state is None:
                    return DestroyResult(plan.name, (), ())
                # A destroy that stops (EBUSY, a covered mount, a kill) leaves this
                # entry behind: recover, or the next apply, finishes the job.
                store.journal_open({"plan": plan.name, "roots": self._root_json(rootset)})
                store.journal_write({"op": "destroy"})
                store.journal_close(remove=False)
                result = destroy_locked(self.ctx, plan.name, state, rootset, store, _events)
                store.journal_close(remove=True)
                return result

    @contextlib.contextmanager
    def session(self, plan: Plan, roots: Mapping[str, str | int] | None = None) -> Iterator[ApplyResult]:
        """Apply, hold the instance while the caller works, then destroy: what ``mountplan run`` does.

        The lock is held for the whole session, so no other apply, destroy or run
        on this instance can pull the mounts away underneath the command. A
        ``session`` entry in the journal marks the mounts as belonging to a live
        run: if this process is killed, the next apply, destroy or recover of the
        instance (which gets the lock only once we are gone) destroys them.
        """
        require_features(plan)
        require_overlay_keys(plan)
        compiled = compiled_for(plan)
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            with store.locked(self.lock_timeout), roots_held(rootset, self.lock_timeout):
                recover_store(self.ctx, store, _events)
                state = self._load_or_new(store, plan, rootset)
                result = apply_locked(self, plan, compiled, rootset, store, state, False)
                store.journal_open({"plan": plan.name, "roots": self._root_json(rootset)})
                store.journal_write({"op": "session", "pid": os.getpid()})
                store.journal_close(remove=False)
                try:
                    yield result
                finally:
                    committed = store.load()
                    if committed is not None:
                        destroy_locked(self.ctx, plan.name, committed, rootset, store, _events)
                    store.journal_close(remove=True)

    def recover(self, key: str | None = None) -> RecoverResult:
        """Undo what interrupted runs left in their journals (every instance, or one)."""
        undone: list[str] = []
        leftovers: list[str] = []
        for k in [key] if key else StateStore.instances(self.state_dir):
            store = StateStore(self.state_dir, k)
            try:
                # A run holds its instance for the command's whole life: a held
                # lock means a live owner, whose work is not ours to undo.
                with store.locked(self.lock_timeout if key else min(self.lock_timeout, 1.0)):
                    done, left = recover_store(self.ctx, store, _events, raise_on_leftovers=False)
            except LockError as exc:
                leftovers.append(f"{k}: {exc}")
                continue
            undone += done
            leftovers += left
        return RecoverResult(tuple(undone), tuple(leftovers))

    def load_state(self, plan: Plan, roots: Mapping[str, str | int] | None = None) -> tuple[StateStore, State | None]:
        """The state store and committed state of a plan instance (no lock, read only)."""
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            return store, store.load()

    def _root_bind_ok(self, state: State, rootset: RootSet, name: str) -> bool:
        """A private root's bind is recorded and still on top of the root."""
        entry = next((m for m in state.mounts if m.name == PREFIX + name), None)
        return entry is not None and self.backend.statx_mount_ids(rootset[name].fileno()).mnt_id == entry.mnt_id

    @staticmethod
    def root_dirs(rootset: RootSet) -> list[str]:
        """Where the roots are: the live table is read only at and beneath them (a busy host's
        other mounts cost nothing)."""
        return [h.identity.path for h in rootset.values()]

    def _still_ours(self, managed: ManagedMount, rootset: RootSet, live: LiveTable) -> bool:
        """A 32-bit id in the table proves nothing: check the root of what is there (unique ids pass).

        A mount with our 32-bit id *under* a foreign one is taken as ours, covered:
        the id cannot have been reused while ours held it.
        """
        if managed.unique or managed.proof is None or managed.root not in rootset:
            return True
        root = rootset[managed.root]
        if self.mount_is_ours(root, managed.target, managed.mnt_id, managed.proof):
            return True
        found = live.by_old_id(managed.mnt_id)
        stack = live.at(f"{root.identity.path.rstrip('/')}/{managed.target}")
        return found is not None and found in stack and stack[-1] is not found

    def mount_is_ours(
        self, root: RootHandle, target: str, mnt_id: int, proof: list[int | None] | None = None
    ) -> bool:
        """True when the mount now on top at ``target`` beneath ``root`` is the one with id ``mnt_id``."""
        try:
            parent, name = resolve_parent(self.backend, root, target)
        except KernelError as exc:
            if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
                return False
            raise
        try:
            return is_ours_at(self.ctx, parent, name, mnt_id, proof)
        finally:
            parent.close()

    # ================================================================== helpers

    @staticmethod
    def _open_roots(plan: Plan, roots: Mapping[str, str | int] | None) -> RootSet:
        """Open the roots ``plan``'s mounts use (run-time overrides applied)."""
        return open_roots(root_paths(plan, roots), roots_used(plan))

    def _load_or_new(self, store: StateStore, plan: Plan, rootset: RootSet) -> State:
        """The committed state, or an empty one for a plan instance never applied."""
        return store.load() or State(plan=plan.name, roots=self._root_json(rootset))

    @staticmethod
    def _root_json(rootset: RootSet) -> dict[str, dict[str, Any]]:
        return {name: handle.identity.to_json() for name, handle in rootset.items()}

    def _store(self, plan: Plan, rootset: RootSet) -> StateStore:
        scope = current_scope()  # once per operation: the key, the files' headers and their checks share it
        return StateStore(self.state_dir, instance_key(plan.name, self._root_json(rootset), scope.mntns), scope=scope)

    def _diff(
        self, plan: Plan, rootset: RootSet, state: State, *, prune: bool, live: LiveTable,
        journaled: frozenset[int] = frozenset(),
    ) -> ChangeSet:
        managed = {
            m.name: (m.mnt_id, m.root, m.target, m.fingerprint, m.unique)
            for m in state.mounts
            if not is_root_bind(m.name) and self._still_ours(m, rootset, live)
        }
        paths = {name: handle.identity.path for name, handle in rootset.items()}
        # Fingerprints only matter for mounts mountplan already made.
        prints = {m.name: fingerprint(m) for m in plan.mounts if m.name in managed}
        # Ours too: what a journal left behind names (half-made mounts are not foreign).
        owned = frozenset(i for m in state.mounts for i in (m.mnt_id, *m.submounts)) | journaled
        mine = [m for m in state.mounts if m.name in managed]
        idmaps: dict[str, IdmapEvidence] = {}
        # Evidence exists only for binds idmapped in the plan or in the state; the
        # idmap code is imported only then (start-up of every run).
        if any(m.idmap is not None for m in mine) or any(s.bind is not None and s.bind.idmap is not None for s in plan.mounts):
            from .idmap import idmap_evidence

            idmaps = idmap_evidence(plan, mine, live)
        changes = diff(plan, managed, live, paths, prints, prune=prune, owned=owned, idmaps=idmaps)
        if plan.objects or state.objects:
            from .object_ops import with_objects

            changes = with_objects(self.ctx, plan, rootset, state, changes, prune=prune)
        return changes

    def plan(self, plan: Plan, roots: Mapping[str, str | int] | None = None, *, prune: bool = False) -> ChangeSet:
        """What apply (with ``prune``) would do, against the live table and the state file. Touches nothing."""
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            todo, journaled = describe_pending(store)
            state = self._load_or_new(store, plan, rootset)
            live = read_live_table(beneath=self.root_dirs(rootset))
            changes = self._diff(plan, rootset, state, prune=prune, live=live, journaled=journaled)
            problems = changes.problems + kernel_problems(self.ctx, plan, changes, rootset)
            return dataclasses.replace(changes, problems=problems, pending=todo) if problems or todo else changes

    def save_plan(
        self, plan: Plan, roots: Mapping[str, str | int] | None = None, *, prune: bool = False
    ) -> tuple[SavedPlan, ChangeSet]:
        """The change set ``plan`` shows, pinned with everything it depends on (touches nothing).

        The plan must have come from a file: the saved plan embeds its text.
        """
        from mountplan import loader  # lazily: embedders that never save plans skip jsonschema
        from mountplan.loader import Diagnostic, Severity

        if plan.source_file is None:
            raise PlanError(
                [Diagnostic("<plan>", 1, 1, Severity.ERROR, "only a plan loaded from a file can be saved (its text is embedded)")]
            )
        with open(plan.source_file, encoding="utf-8") as f:
            text = f.read()
        # The embedded text must be the plan this change set is computed from.
        if loader.load_text(text, filename=plan.source_file, strict_kernel=False) != plan:
            raise PlanError(
                [Diagnostic(plan.source_file, 1, 1, Severity.ERROR, "the plan file changed while it was being planned; run again")]
            )
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            committed = store.load()
            state = committed or State(plan=plan.name, roots=self._root_json(rootset))
            live = read_live_table(beneath=self.root_dirs(rootset))
            changes = self._diff(plan, rootset, state, prune=prune, live=live)
            from .saved import SavedPlan, state_digest

            saved = SavedPlan(
                plan_name=plan.name,
                plan_file=plan.source_file,
                plan_text=text,
                roots=self._root_json(rootset),
                prune=prune,
                state_digest=state_digest(committed),
                live=tuple(self._snapshot(rootset, state, live)),
                changes=changes.to_json(),
                state_dir=os.path.abspath(self.state_dir),
            )
        return saved, changes

    def apply_saved(self, saved: SavedPlan, roots: Mapping[str, str | int] | None = None) -> ApplyResult:
        """Apply a saved plan exactly, or raise StalePlanError and change nothing.

        Roots are the saved paths unless ``roots`` overrides them (a path or an
        fd); either way each must still be the same directory (device, inode).
        This engine's state directory must be the one the plan was saved with
        (StalePlanError naming it otherwise): callers pass ``saved.state_dir``
        unless they were told another.
        """
        from mountplan import loader

        saved.check_state_dir(self.state_dir)
        detect().require()
        plan = loader.load_text(saved.plan_text, filename=saved.plan_file)
        require_features(plan)
        require_overlay_keys(plan)
        compiled = compiled_for(plan)
        paths: dict[str, str | int] = {name: str(ident["path"]) for name, ident in saved.roots.items()}
        paths.update(roots or {})
        with self._open_roots(plan, paths) as rootset:
            saved.check_roots(self._root_json(rootset))
            store = self._store(plan, rootset)
            with store.locked(self.lock_timeout):
                recover_store(self.ctx, store, _events)
                committed = store.load()
                state = committed or State(plan=plan.name, roots=self._root_json(rootset))
                live = read_live_table(beneath=self.root_dirs(rootset))
                saved.check_live(committed, self._snapshot(rootset, state, live))
                changes = self._diff(plan, rootset, state, prune=saved.prune, live=live)
                saved.check_changes(changes.to_json())
                return apply_locked(self, plan, compiled, rootset, store, state, saved.prune, (changes, live))

    @staticmethod
    def _snapshot(rootset: RootSet, state: State, live: LiveTable) -> list[dict[str, Any]]:
        from .saved import live_snapshot

        return live_snapshot(live, [h.identity.path for h in rootset.values()], [m.mnt_id for m in state.mounts])
