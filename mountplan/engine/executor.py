"""Execute compiled steps as a transaction, with a journal and rollback.

apply: for each mount in run order, walk its chain of steps. Before and after
every step that changes the system, a journal line records what to undo. On any
failure every open mount fd is closed (an open fd makes an unmount EBUSY), then
the recorded changes are undone in reverse order, carrying on past undo failures;
whatever could not be undone is reported and stays in the journal for
``recover``. A mount is only ever unmounted after checking that the mount now at
its target has the mount id recorded when mountplan made it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import functools
import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from mountplan._kernel import (
    AtFlag,
    Fd,
    FspickFlag,
    MountAttr,
    MoveMountFlag,
    OpenFlag,
    OpenTreeFlag,
    UmountFlag,
    detect,
)
from mountplan._kernel import (
    Propagation as KernelPropagation,
)
from mountplan.changes import Action, Change, ChangeSet, diff
from mountplan.compiler import CompiledPlan, Step, StepKind, compile_apply
from mountplan.errors import BusyError, ExecutionError, KernelError, MountplanError, PlanError, RootError
from mountplan.livetable import LiveTable, read_live_table
from mountplan.model import OVERLAY_PATH_KEYS, Attr, MountKind, MountpointKind, MountSpec, Plan

from .backend import Backend, KernelBackend
from .holders import find_holders
from .roots import (
    BENEATH,
    O_PATH_ANY,
    O_PATH_DIR,
    RootHandle,
    RootIdentity,
    RootSet,
    open_roots,
    reopen_root,
    resolve,
    resolve_parent,
)
from .saved import SavedPlan, live_snapshot, state_digest
from .state import ManagedMount, State, StateStore, default_state_dir, instance_key

# Events go through a stdlib logger that nobody configures but the CLI: an
# embedding program sees only warnings (stdlib's last-resort handler) until it
# sets up logging itself. The library never configures structlog.
_stdlib_log = logging.getLogger("mountplan")
log = structlog.wrap_logger(_stdlib_log)


def _enabled(level: int) -> bool:
    # structlog renders an event before stdlib drops it; per-step events would
    # cost more than the syscalls they describe, so check the level first.
    return _stdlib_log.isEnabledFor(level)

AT_FDCWD = -100

# Flag combinations computed once: IntFlag arithmetic is slow in a per-step path.
_EMPTY_PATH = AtFlag.EMPTY_PATH
_EMPTY_PATH_RECURSIVE = AtFlag.EMPTY_PATH | AtFlag.RECURSIVE
_MOVE_FDS = MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH

#: Attribute bits a plan fully controls on a filesystem mount (cleared when not planned).
_SETTABLE = (
    MountAttr.RDONLY | MountAttr.NOSUID | MountAttr.NODEV | MountAttr.NOEXEC | MountAttr.NODIRATIME
    | MountAttr.NOSYMFOLLOW | MountAttr.NOATIME | MountAttr.STRICTATIME
)


_SCALARS = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _canonical(value: Any) -> Any:
    # Hot for big plans (every mount of every apply): plain scalars first, and
    # dataclass field names looked up once per class, not per value.
    cls = type(value)
    if cls in _SCALARS:
        return value
    names = _FIELD_NAMES.get(cls)
    if names is not None:
        return {name: _canonical(getattr(value, name)) for name in names}
    if isinstance(value, frozenset | set):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(value))
        return _canonical(value)
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    return value


@functools.lru_cache(maxsize=16384)
def fingerprint(spec: MountSpec) -> str:
    """Identity of a mount's definition; a change means the mount must be replaced.

    Canonical JSON, not repr(): frozenset order depends on per-process hash seeds.
    """
    text = json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def compiled_for(plan: Plan) -> CompiledPlan:
    """The compiled steps of ``plan``, kept for the next apply of an equal plan.

    A build worker applies the same plan for every action; compiling is a pure
    function of the plan, so an equal plan (hash + ==, a few µs per mount) reuses
    it. The engine only reads a CompiledPlan.
    """
    return compile_apply(plan)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply did: mounts created, left as they were, and replaced."""

    plan: str
    created: tuple[str, ...]
    unchanged: tuple[str, ...]
    replaced: tuple[str, ...]
    state_file: str
    updated: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.created or self.replaced or self.updated or self.pruned)


@dataclass(frozen=True, slots=True)
class DestroyResult:
    plan: str
    removed: tuple[str, ...]
    already_gone: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecoverResult:
    undone: tuple[str, ...]
    leftovers: tuple[str, ...]


@dataclass(slots=True)
class _Undo:
    """One journaled change, undone in reverse order on failure."""

    seq: int
    op: str  # "mount" | "mkdir" | "mkfile"
    root: str
    path: str
    mnt_id: int = 0
    dev: int = 0
    ino: int = 0
    mount: str = ""
    recursive: bool = False  # a recursive bind: its cloned submounts go with a detach
    #: op "update": what the mount had before (attrs, clear, propagation, options)
    restore: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.op == "mount":
            return f"mount {self.mount!r} at {self.root}:{self.path} (mount id {self.mnt_id})"
        if self.op == "update":
            return f"in-place update of {self.mount!r} at {self.root}:{self.path} (mount id {self.mnt_id})"
        return f"{'directory' if self.op == 'mkdir' else 'file'} {self.root}:{self.path} created for {self.mount!r}"


@dataclass(slots=True)
class _Handles:
    """Fds one mount's chain holds while it runs; all closed before any unmount."""

    fs: Fd | None = None
    mnt: Fd | None = None
    target: Fd | None = None
    extra: list[Fd] = field(default_factory=list)
    source_is_file: bool = False
    mnt_id: int = 0
    unique: bool = True
    created: list[dict[str, Any]] = field(default_factory=list)

    def close(self) -> None:
        for fd in (self.fs, self.mnt, self.target, *self.extra):
            if fd is not None:
                fd.close()
        self.extra.clear()


def root_paths(plan: Plan, overrides: Mapping[str, str | int] | None) -> dict[str, str | int | None]:
    """Plan root paths with run-time overrides (paths or caller-owned fds) applied."""
    merged: dict[str, str | int | None] = {r.name: r.path for r in plan.roots}
    for name, value in (overrides or {}).items():
        if name not in merged:
            raise RootError(f"--root {name}: the plan has no root named {name!r} (it has {', '.join(sorted(merged)) or 'none'})")
        merged[name] = value
    return merged


class Engine:
    """Runs plans against the kernel through a backend, with state in ``state_dir``."""

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        state_dir: str | None = None,
        lock_timeout: float = 30.0,
        lazy: bool = False,
    ) -> None:
        self.backend: Any = backend if backend is not None else KernelBackend()
        self.state_dir = state_dir or default_state_dir()
        self.lock_timeout = lock_timeout
        self.lazy = lazy
        self._tx: tuple[StateStore, list[_Undo]] | None = None

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
        detect().require()
        compiled = compiled or compiled_for(plan)
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            with store.locked(self.lock_timeout):
                self._recover_store(store)
                state = self._load_or_new(store, plan, rootset)
                return self._apply_locked(plan, compiled, rootset, store, state, prune)

    def destroy(self, plan: Plan, roots: Mapping[str, str | int] | None = None) -> DestroyResult:
        """Unmount every mount this plan instance made, innermost first, and remove its mountpoints."""
        detect().require()
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            with store.locked(self.lock_timeout):
                self._recover_store(store)
                state = store.load()
                if state is None:
                    return DestroyResult(plan.name, (), ())
                return self._destroy_locked(plan.name, state, rootset, store)

    def recover(self, key: str | None = None) -> RecoverResult:
        """Undo what interrupted runs left in their journals (every instance, or one)."""
        undone: list[str] = []
        leftovers: list[str] = []
        for k in [key] if key else StateStore.instances(self.state_dir):
            store = StateStore(self.state_dir, k)
            with store.locked(self.lock_timeout):
                done, left = self._recover_store(store, raise_on_leftovers=False)
            undone += done
            leftovers += left
        return RecoverResult(tuple(undone), tuple(leftovers))

    def load_state(self, plan: Plan, roots: Mapping[str, str | int] | None = None) -> tuple[StateStore, State | None]:
        """The state store and committed state of a plan instance (no lock, read only)."""
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            return store, store.load()

    # ================================================================== helpers

    @staticmethod
    def _open_roots(plan: Plan, roots: Mapping[str, str | int] | None) -> RootSet:
        """Open the roots ``plan``'s mounts use (run-time overrides applied)."""
        return open_roots(root_paths(plan, roots), sorted({m.root for m in plan.mounts}))

    def _load_or_new(self, store: StateStore, plan: Plan, rootset: RootSet) -> State:
        """The committed state, or an empty one for a plan instance never applied."""
        return store.load() or State(plan=plan.name, roots=self._root_json(rootset))

    @staticmethod
    def _root_json(rootset: RootSet) -> dict[str, dict[str, Any]]:
        return {name: handle.identity.to_json() for name, handle in rootset.items()}

    def _store(self, plan: Plan, rootset: RootSet) -> StateStore:
        return StateStore(self.state_dir, instance_key(plan.name, self._root_json(rootset)))

    def mount_is_ours(self, root: RootHandle, target: str, mnt_id: int) -> bool:
        """True when the mount now at ``target`` is the one with id ``mnt_id``."""
        try:
            parent, name = resolve_parent(self.backend, root, target)
        except KernelError as exc:
            if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
                return False
            raise
        try:
            return self._is_ours_at(parent, name, mnt_id)
        finally:
            parent.close()

    def _is_ours_at(self, parent: Fd, name: str, mnt_id: int) -> bool:
        try:
            ids = self.backend.statx_mount_ids(parent.fileno(), name, AtFlag.SYMLINK_NOFOLLOW)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return bool(ids.mnt_id == mnt_id)

    # ================================================================== apply

    @staticmethod
    def _diff(plan: Plan, rootset: RootSet, state: State, *, prune: bool, live: LiveTable) -> ChangeSet:
        managed = {m.name: (m.mnt_id, m.root, m.target, m.fingerprint) for m in state.mounts}
        paths = {name: handle.identity.path for name, handle in rootset.items()}
        # Fingerprints only matter for mounts mountplan already made.
        prints = {m.name: fingerprint(m) for m in plan.mounts if m.name in managed}
        return diff(plan, managed, live, paths, prints, prune=prune)

    def plan(self, plan: Plan, roots: Mapping[str, str | int] | None = None, *, prune: bool = False) -> ChangeSet:
        """What apply (with ``prune``) would do, against the live table and the state file. Touches nothing."""
        with self._open_roots(plan, roots) as rootset:
            store = self._store(plan, rootset)
            return self._diff(plan, rootset, self._load_or_new(store, plan, rootset), prune=prune, live=read_live_table())

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
            live = read_live_table()
            changes = self._diff(plan, rootset, state, prune=prune, live=live)
            saved = SavedPlan(
                plan_name=plan.name,
                plan_file=plan.source_file,
                plan_text=text,
                roots=self._root_json(rootset),
                prune=prune,
                state_digest=state_digest(committed),
                live=tuple(self._snapshot(rootset, state, live)),
                changes=changes.to_json(),
            )
        return saved, changes

    def apply_saved(self, saved: SavedPlan, roots: Mapping[str, str | int] | None = None) -> ApplyResult:
        """Apply a saved plan exactly, or raise StalePlanError and change nothing.

        Roots are the saved paths unless ``roots`` overrides them (a path or an
        fd); either way each must still be the same directory (device, inode).
        """
        from mountplan import loader

        detect().require()
        plan = loader.load_text(saved.plan_text, filename=saved.plan_file)
        compiled = compiled_for(plan)
        paths: dict[str, str | int] = {name: str(ident["path"]) for name, ident in saved.roots.items()}
        paths.update(roots or {})
        with self._open_roots(plan, paths) as rootset:
            saved.check_roots(self._root_json(rootset))
            store = self._store(plan, rootset)
            with store.locked(self.lock_timeout):
                self._recover_store(store)
                committed = store.load()
                state = committed or State(plan=plan.name, roots=self._root_json(rootset))
                live = read_live_table()
                saved.check_live(committed, self._snapshot(rootset, state, live))
                changes = self._diff(plan, rootset, state, prune=saved.prune, live=live)
                saved.check_changes(changes.to_json())
                return self._apply_locked(plan, compiled, rootset, store, state, saved.prune, (changes, live))

    @staticmethod
    def _snapshot(rootset: RootSet, state: State, live: LiveTable) -> list[dict[str, Any]]:
        return live_snapshot(live, [h.identity.path for h in rootset.values()], [m.mnt_id for m in state.mounts])

    def _update_in_place(self, spec: MountSpec, root: RootHandle, change: Change, live: LiveTable, plog: Any) -> None:
        """Fix drift without a remount: mount_setattr, and fspick + reconfigure for options.

        What the mount had before is journaled first, so a failure later in the
        same apply (or a crash, via recover) puts it back.
        """
        k = self.backend
        fields = {f.field.split(".")[0] for f in change.fields}
        target = resolve(k, root, spec.target, O_PATH_ANY)
        try:
            ids = k.statx_mount_ids(target.fileno())
            if ids.mnt_id != change.mnt_id:
                raise ExecutionError(f"mount at {root.name}:{spec.target} is not the one mountplan made", step=f"{spec.name}:update")
            restore = self._restore_info(spec, change, live, ids.unique)
            assert self._tx is not None
            store, undo = self._tx
            seq = store.journal_write(
                {"op": "update", "mount": spec.name, "root": root.name, "path": spec.target, "mnt_id": ids.mnt_id,
                 "restore": restore}
            )
            undo.append(_Undo(seq, "update", root.name, spec.target, mnt_id=ids.mnt_id, mount=spec.name, restore=restore))
            if "attrs" in fields or "propagation" in fields:
                want = spec.kernel_attrs
                clear = MountAttr(0)
                if spec.kind is MountKind.FILESYSTEM:
                    clear = MountAttr(int(_SETTABLE) & ~int(want))
                elif Attr.RELATIME in spec.attrs:
                    clear = MountAttr.NOATIME | MountAttr.STRICTATIME
                k.mount_setattr(
                    target.fileno(), "", AtFlag.EMPTY_PATH, want, clear, propagation=spec.propagation.kernel_value
                )
            if "options" in fields:
                ctx = k.fspick(target.fileno(), "", FspickFlag.CLOEXEC | FspickFlag.EMPTY_PATH)
                try:
                    for opt in spec.options:
                        if opt.value is None:
                            k.fsconfig_set_flag(ctx.fileno(), opt.key)
                        else:
                            k.fsconfig_set_string(ctx.fileno(), opt.key, opt.value)
                    k.fsconfig_reconfigure(ctx.fileno())
                finally:
                    ctx.close()
        finally:
            target.close()
        plog.info("mount.updated", mount=spec.name, fields=sorted(fields))

    @staticmethod
    def _restore_info(spec: MountSpec, change: Change, table: LiveTable, unique: bool) -> dict[str, Any]:
        """The attributes, propagation and planned options a mount about to be updated has.

        ``table`` is the one the diff read under the lock; earlier updates in this
        apply touch other mounts only (mount_setattr without AT_RECURSIVE).
        """
        assert change.mnt_id is not None
        live = table.by_id(change.mnt_id) if unique else table.by_old_id(change.mnt_id)
        if live is None:
            raise ExecutionError(f"mount {spec.name!r} (id {change.mnt_id}) is not in the live table", step=f"{spec.name}:update")
        have = int(live.attrs) & int(_SETTABLE)
        options: dict[str, str | None] = {}
        planned_keys = {opt.key for opt in spec.options}
        for item in live.super_options:
            key, sep, value = item.partition("=")
            if key in planned_keys:
                options[key] = value if sep else None
        return {
            "attrs": have,
            "clear": int(_SETTABLE) & ~have,
            "propagation": live.propagation.name,
            "options": options,
        }

    def _restore(self, item: _Undo, root: RootHandle) -> None:
        """Undo an in-place update: put back attributes, propagation type and options.

        A peer group or master the mount had is not restored: the kernel can make
        a mount shared or a slave again, but not rejoin a particular group.
        """
        k = self.backend
        assert item.restore is not None
        try:
            target = resolve(k, root, item.path, O_PATH_ANY)
        except KernelError as exc:
            if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
                return  # gone: nothing of ours to restore
            raise
        try:
            if k.statx_mount_ids(target.fileno()).mnt_id != item.mnt_id:
                return  # not the mount we updated any more
            r = item.restore
            k.mount_setattr(
                target.fileno(), "", AtFlag.EMPTY_PATH, MountAttr(int(r["attrs"])), MountAttr(int(r["clear"])),
                propagation=KernelPropagation[str(r["propagation"])],
            )
            if r.get("options"):
                ctx = k.fspick(target.fileno(), "", FspickFlag.CLOEXEC | FspickFlag.EMPTY_PATH)
                try:
                    for key, value in sorted(r["options"].items()):
                        if value is None:
                            k.fsconfig_set_flag(ctx.fileno(), key)
                        else:
                            k.fsconfig_set_string(ctx.fileno(), key, str(value))
                    k.fsconfig_reconfigure(ctx.fileno())
                finally:
                    ctx.close()
        finally:
            target.close()

    def _apply_locked(
        self,
        plan: Plan,
        compiled: CompiledPlan,
        rootset: RootSet,
        store: StateStore,
        state: State,
        prune: bool = False,
        planned: tuple[ChangeSet, LiveTable] | None = None,
    ) -> ApplyResult:
        """Carry out the changes (computed now unless ``planned`` gives them and the table they came from)."""
        pruned: list[str] = []
        plog = log.bind(plan=plan.name)
        if planned is None:
            live = read_live_table()
            changes = self._diff(plan, rootset, state, prune=prune, live=live)
        else:
            changes, live = planned
        unchanged = [c.mount for c in changes.changes if c.action is Action.NOOP]
        for foreign in changes.foreign:
            plog.warning("foreign_mount", mount_point=foreign.mount_point, near=foreign.near)
        if changes.kept:
            plog.info("apply.kept", mounts=[c.mount for c in changes.kept], hint="apply --prune removes them")
        if not changes.has_changes:
            plog.info("apply.done", created=0, updated=0, unchanged=len(unchanged))
            return ApplyResult(plan.name, (), tuple(unchanged), (), store.state_path)

        replaced: list[str] = []
        updated: list[str] = []
        todo: list[str] = []
        by_name = {c.mount: c for c in changes.changes}
        specs = {m.name: m for m in plan.mounts}
        managed_by_name = {m.name: m for m in state.mounts}
        new_prints: list[tuple[ManagedMount, str]] = []

        store.journal_open({"plan": plan.name, "roots": self._root_json(rootset)})
        undo: list[_Undo] = []
        self._tx = (store, undo)
        all_handles: list[_Handles] = []
        made: list[ManagedMount] = []
        current: Step | None = None
        where = ("?", "?")  # (step id, what it does) for the error message
        debug, info = _enabled(logging.DEBUG), _enabled(logging.INFO)
        try:
            # First fix or remove what exists, in mount order (a parent's
            # propagation is right before anything is mounted beneath it).
            # Updates are journaled and undone on failure; an unmount cannot be
            # undone, so a removal is committed to the state at once.
            for name in compiled.mount_order:
                change = by_name[name]
                managed = managed_by_name.get(name)
                if change.action is Action.NOOP:
                    continue
                if change.action is Action.UPDATE and managed is not None:
                    spec = specs[name]
                    where = (f"{name}:update", "update in place: " + ", ".join(f.field for f in change.fields))
                    self._update_in_place(spec, rootset[spec.root], change, live, plog)
                    new_prints.append((managed, fingerprint(spec)))
                    updated.append(name)
                    continue
                if managed is not None:
                    if change.action is Action.REPLACE:
                        where = (f"{name}:unmount", "unmount before replacing")
                        self._unmount_managed(managed, rootset[managed.root], plog)
                        replaced.append(name)
                    state.mounts.remove(managed)
                    store.save(state)
                todo.append(name)
            for change in changes.changes:
                managed = managed_by_name.get(change.mount) if change.action is Action.DELETE else None
                if managed is not None:
                    where = (f"{change.mount}:unmount", "unmount (prune)")
                    self._unmount_managed(managed, rootset[managed.root], plog)
                    state.mounts.remove(managed)
                    store.save(state)
                    pruned.append(change.mount)
            for name in todo:
                spec = specs[name]
                handles = _Handles()
                all_handles.append(handles)
                mlog = plog.bind(mount=name) if debug else plog
                root = rootset[spec.root]
                for step in compiled.chain(name):
                    current = step
                    if debug:
                        mlog.debug("step", step=step.id, kind=step.kind.value)
                    _STEP_HANDLERS[step.kind](self, step, spec, root, handles, store, undo)
                handles.close()
                made.append(
                    ManagedMount(
                        name=name,
                        root=spec.root,
                        target=spec.target,
                        mnt_id=handles.mnt_id,
                        unique=handles.unique,
                        fingerprint=fingerprint(spec),
                        created=handles.created,
                        recursive=spec.bind is not None and spec.bind.recursive,
                    )
                )
                if info:
                    mlog.info("mount.created", target=f"{spec.root}:{spec.target}", mnt_id=handles.mnt_id)
        except BaseException as exc:
            self._tx = None
            for handles in all_handles:
                handles.close()
            leftovers = self._rollback(undo, rootset, store, plog)
            store.journal_close(remove=not leftovers)
            if current is not None:
                where = (current.id, current.render())
            cause = str(exc) if isinstance(exc, MountplanError | OSError) else repr(exc)
            message = (
                f"apply {plan.name!r} failed at step {where[0]} ({where[1]}): {cause}. "
                + ("Everything it had done was undone." if not leftovers else "Rollback was incomplete.")
                + (f" Already removed (an unmount cannot be undone): {', '.join(replaced + pruned)}." if replaced or pruned else "")
            )
            plog.error("apply.failed", step=where[0], error=cause, leftovers=leftovers)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if isinstance(exc, BusyError):
                raise BusyError(message, step=where[0], holders=exc.holders, leftovers=leftovers) from exc
            raise ExecutionError(message, step=where[0], leftovers=leftovers) from exc
        self._tx = None
        for managed, print_ in new_prints:
            managed.fingerprint = print_
        state.mounts.extend(made)
        store.save(state)
        store.journal_close(remove=True)
        plog.info("apply.done", created=len(todo) - len(replaced), replaced=len(replaced), updated=len(updated),
                  pruned=len(pruned), unchanged=len(unchanged))
        created = tuple(n for n in todo if n not in replaced)
        return ApplyResult(
            plan.name, created, tuple(unchanged), tuple(replaced), store.state_path, tuple(updated), tuple(pruned)
        )

    # One method per apply step kind, dispatched through _STEP_HANDLERS (a dict
    # lookup, not an if-chain: a big plan runs ten steps per mount). A destroy
    # step kind has no handler: a KeyError here is a compiler bug.

    def _step_fsopen(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        assert spec.fs_type is not None
        h.fs = self.backend.fsopen(spec.fs_type)

    def _step_fsconfig(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        key, sep, value = step.args[0][1].partition("=")  # args: (("option", "KEY[=VALUE]"),)
        self._fsconfig(spec, root, h, key, value if sep else None)

    def _step_create(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        assert h.fs is not None
        self.backend.fsconfig_create(h.fs.fileno())

    def _step_fsmount(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        assert h.fs is not None
        h.mnt = self.backend.fsmount(h.fs.fileno(), spec.kernel_attrs)
        h.fs.close()

    def _step_open_tree(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        self._open_tree(spec, root, h)

    def _step_set_attr(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        assert h.mnt is not None and spec.bind is not None
        attr_set = spec.kernel_attrs
        attr_clr = MountAttr(0)
        if Attr.RELATIME in spec.attrs:
            attr_clr = MountAttr.NOATIME | MountAttr.STRICTATIME
        if attr_set or attr_clr:
            flags = _EMPTY_PATH_RECURSIVE if spec.bind.recursive else _EMPTY_PATH
            self.backend.mount_setattr(h.mnt.fileno(), "", flags, attr_set, attr_clr)

    def _step_mountpoint(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        self._ensure_mountpoint(spec, root, h)

    def _step_resolve_target(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        if h.target is None:  # else the mkdir step already holds it, resolved the same way
            h.target = resolve(self.backend, root, spec.target, O_PATH_ANY)

    def _step_move_mount(
        self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, store: StateStore, undo: list[_Undo]
    ) -> None:
        k = self.backend
        assert h.mnt is not None and h.target is not None
        ids = k.statx_mount_ids(h.mnt.fileno())
        h.mnt_id, h.unique = ids.mnt_id, ids.unique
        # Journal first: if we are killed right after move_mount, recovery
        # finds this unique id at the target and knows the mount is ours.
        recursive = spec.bind is not None and spec.bind.recursive
        seq = store.journal_write(
            {"op": "mount", "mount": spec.name, "root": spec.root, "path": spec.target, "mnt_id": ids.mnt_id,
             "recursive": recursive}
        )
        undo.append(_Undo(seq, "mount", spec.root, spec.target, mnt_id=ids.mnt_id, mount=spec.name, recursive=recursive))
        k.move_mount(h.mnt.fileno(), "", h.target.fileno(), "", _MOVE_FDS, shown_target=f"{spec.root}:{spec.target}")
        h.target.close()

    def _step_propagation(self, step: Step, spec: MountSpec, root: RootHandle, h: _Handles, *_: Any) -> None:
        assert h.mnt is not None
        flags = _EMPTY_PATH_RECURSIVE if spec.bind is not None and spec.bind.recursive else _EMPTY_PATH
        self.backend.mount_setattr(h.mnt.fileno(), "", flags, propagation=spec.propagation.kernel_value)
        h.mnt.close()

    def _fsconfig(self, spec: MountSpec, root: RootHandle, h: _Handles, key: str, value: str | None) -> None:
        k = self.backend
        assert h.fs is not None
        fs = h.fs.fileno()
        if value is None:
            k.fsconfig_set_flag(fs, key)
        elif spec.fs_type == "overlay" and key in OVERLAY_PATH_KEYS - {"lowerdir"} and not value.startswith("/"):
            # A layer inside the root is pinned with openat2 like any target and
            # handed over as an fd: no path string is ever re-walked.
            if key in {"upperdir", "workdir"}:
                self._make_path(spec, root, value, h, want_file=False, mode=0o755).close()
            layer = k.openat2(
                root.fileno(), value, OpenFlag.RDONLY | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC, BENEATH,
                shown=f"{root.name}:{value}",
            )
            h.extra.append(layer)
            k.fsconfig_set_fd(fs, key, layer.fileno())
        else:
            k.fsconfig_set_string(fs, key, value)

    def _open_tree(self, spec: MountSpec, root: RootHandle, h: _Handles) -> None:
        k = self.backend
        assert spec.bind is not None
        flags = OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC
        if spec.bind.recursive:
            flags |= OpenTreeFlag.RECURSIVE
        ref = spec.bind.source
        if ref.root is None:
            h.mnt = k.open_tree(AT_FDCWD, ref.path, flags)
        else:
            src_root = root if ref.root == root.name else None
            if src_root is None:
                raise RootError(f"mount {spec.name!r}: bind source root {ref.root!r} is not open")
            src = resolve(k, src_root, ref.path, O_PATH_ANY)
            try:
                h.mnt = k.open_tree(src.fileno(), "", flags | OpenTreeFlag.EMPTY_PATH)
            finally:
                src.close()
        assert h.mnt is not None
        h.source_is_file = not stat.S_ISDIR(os.fstat(h.mnt.fileno()).st_mode)

    def _ensure_mountpoint(self, spec: MountSpec, root: RootHandle, h: _Handles) -> None:
        want_file = spec.mountpoint.kind is MountpointKind.FILE or (
            spec.mountpoint.kind is None and spec.kind is MountKind.BIND and h.source_is_file
        )
        # The fd that proves the mountpoint exists is the resolved target: keep
        # it for move_mount rather than resolving the same path a second time.
        h.target = self._make_path(
            spec, root, spec.target, h, want_file=want_file, mode=spec.mountpoint.mode, create=spec.mountpoint.create
        )

    def _make_path(
        self,
        spec: MountSpec,
        root: RootHandle,
        path: str,
        h: _Handles,
        *,
        want_file: bool,
        mode: int,
        create: bool = True,
    ) -> Fd:
        """Create missing components of ``path`` beneath ``root``, journaling each one.

        Returns an O_PATH fd of ``path``, resolved beneath the root.
        """
        k = self.backend
        parent_path, _, last = path.rpartition("/")
        # Common case first: the parent exists (a target right under its root or
        # under an earlier mount), so one openat2 probes and at most one mkdir follows.
        try:
            parent = resolve(k, root, parent_path, O_PATH_DIR)
        except KernelError as exc:
            if exc.errno != errno.ENOENT or not create:
                raise
            return self._make_walk(spec, root, path, h, want_file=want_file, mode=mode)
        try:
            return self._make_one(
                spec, root, parent.fileno(), last, path, h, last=True, want_file=want_file, mode=mode, create=create
            )
        finally:
            parent.close()

    def _make_walk(self, spec: MountSpec, root: RootHandle, path: str, h: _Handles, *, want_file: bool, mode: int) -> Fd:
        """Walk ``path`` from the root one component at a time, creating what is missing."""
        parts = path.split("/")
        cur = resolve(self.backend, root, "", O_PATH_DIR)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                nxt = self._make_one(
                    spec, root, cur.fileno(), part, "/".join(parts[: i + 1]), h,
                    last=last, want_file=want_file, mode=mode, create=True,
                )
                cur.close()
                cur = nxt
        except BaseException:
            cur.close()
            raise
        return cur

    def _make_one(
        self, spec: MountSpec, root: RootHandle, dirfd: int, part: str, sub: str, h: _Handles,
        *, last: bool, want_file: bool, mode: int, create: bool,
    ) -> Fd:
        """Open ``part`` in ``dirfd`` (beneath it, no symlinks), creating it first if missing."""
        k = self.backend
        shown = f"{root.name}:{sub}"
        flags = O_PATH_ANY if last else O_PATH_DIR
        if not create:
            return k.openat2(dirfd, part, flags, BENEATH, shown=shown)  # type: ignore[no-any-return]
        found = k.openat2_if_exists(dirfd, part, flags, BENEATH, shown=shown)
        if found is not None:
            return found  # type: ignore[no-any-return]
        assert self._tx is not None
        store, undo = self._tx
        op = "mkfile" if last and want_file else "mkdir"
        # Journal before creating: a crash in between leaves a line whose path
        # does not exist, which recovery skips; never an unrecorded directory.
        seq = store.journal_write({"op": op, "mount": spec.name, "root": root.name, "path": sub})
        if op == "mkdir":
            k.mkdirat(dirfd, part, mode if last else 0o755, shown=shown)
        else:
            self._mkfile(dirfd, part, mode, shown)
        st = os.stat(part, dir_fd=dirfd, follow_symlinks=False)
        undo.append(_Undo(seq, op, root.name, sub, dev=st.st_dev, ino=st.st_ino, mount=spec.name))
        store.journal_write({"op": "created", "ref": seq, "dev": st.st_dev, "ino": st.st_ino})
        h.created.append({"op": op, "path": sub, "dev": st.st_dev, "ino": st.st_ino})
        return k.openat2(dirfd, part, flags, BENEATH, shown=shown)  # type: ignore[no-any-return]

    @staticmethod
    def _mkfile(dirfd: int, name: str, mode: int, shown: str) -> None:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o666, dir_fd=dirfd)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, "openat", paths=[shown], flags="O_CREAT|O_EXCL") from None
        os.close(fd)

    # ================================================================== undo

    def _undo_one(self, item: _Undo, root: RootHandle, at: tuple[Fd, str] | None = None) -> None:
        k = self.backend
        if item.op == "update":
            self._restore(item, root)
            return
        if item.op == "mount":
            if not self.mount_is_ours(root, item.path, item.mnt_id):
                if read_live_table().by_id(item.mnt_id) is not None:
                    # Still in the namespace, but something else is mounted on
                    # top: it is not ours to remove, and ours must not be forgotten.
                    raise ExecutionError(
                        f"mount {item.mount!r} at {root.name}:{item.path} is hidden under a mount mountplan did not make"
                    )
                return  # never attached (or already gone): nothing of ours is there
            parent, name = resolve_parent(k, root, item.path)
            try:
                self._umount(parent, name, item.mnt_id, root, item.path, recursive=item.recursive)
            finally:
                parent.close()
            return
        if at is not None:
            parent, name = at
        else:
            try:
                parent, name = resolve_parent(k, root, item.path)
            except KernelError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise
        try:
            try:
                st = os.stat(name, dir_fd=parent.fileno(), follow_symlinks=False)
            except FileNotFoundError:
                return
            if item.ino and (st.st_dev, st.st_ino) != (item.dev, item.ino):
                raise ExecutionError(f"{root.name}:{item.path} is not the {item.op} mountplan made; left alone")
            if item.op == "mkdir":
                os.rmdir(name, dir_fd=parent.fileno())
            else:
                os.unlink(name, dir_fd=parent.fileno())
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, "rmdir" if item.op == "mkdir" else "unlink", paths=[f"{root.name}:{item.path}"]) from None
        finally:
            if at is None:
                parent.close()

    def _umount(self, parent: Fd, name: str, mnt_id: int, root: RootHandle, target: str, *, recursive: bool) -> None:
        shown = f"{root.name}:{target}"
        try:
            self.backend.umount_at(parent.fileno(), name, UmountFlag.NOFOLLOW, shown=shown)
        except KernelError as exc:
            if exc.errno != errno.EBUSY:
                raise
            point = f"{root.identity.path.rstrip('/')}/{target}"
            # Holders of the mount itself *and* of anything mounted beneath it:
            # detaching a mount takes its children with it.
            subtree = [m for m in read_live_table().beneath(point) if m.mnt_id is not None]
            ids = {mnt_id} | {m.mnt_id for m in subtree if m.mnt_id is not None}
            holders = [h for i in sorted(ids) for h in find_holders(i, point if i == mnt_id else None)]
            if self.lazy or (recursive and not holders):
                # No process holds the tree: what keeps it busy is the subtree a
                # recursive bind cloned along with it, which goes with a detach.
                self.backend.umount_at(parent.fileno(), name, UmountFlag.NOFOLLOW | UmountFlag.DETACH, shown=shown)
                return
            raise BusyError(
                f"cannot unmount {shown}: {exc}"
                + (f"; held by {'; '.join(holders)}" if holders else "; a mount beneath it is in use")
                + "; stop them or use --lazy to detach",
                holders=holders,
            ) from exc

    def _rollback(self, undo: list[_Undo], rootset: RootSet, store: StateStore, plog: Any) -> list[str]:
        failed: list[tuple[_Undo, Exception]] = []
        for item in reversed(undo):
            try:
                self._undo_one(item, rootset[item.root])
                store.journal_write({"op": "undone", "ref": item.seq})
            except Exception as first:  # noqa: BLE001 - carry on: report every leftover, not just the first
                failed.append((item, first))
        # A directory the kernel filled (overlay makes <workdir>/work) may sit on a
        # mount this rollback has since removed: retry once, now that it may be gone.
        leftovers: list[str] = []
        for item, error in failed:
            reason: Exception = error
            if item.op != "mount":
                try:
                    self._undo_one(item, rootset[item.root])
                    store.journal_write({"op": "undone", "ref": item.seq})
                    continue
                except Exception as again:  # noqa: BLE001 - reported as a leftover
                    reason = again
            leftovers.append(f"{item.describe()}: {reason}")
            plog.warning("rollback.failed", item=item.describe(), error=str(reason))
        return leftovers

    def _recover_store(self, store: StateStore, *, raise_on_leftovers: bool = True) -> tuple[list[str], list[str]]:
        """Undo a journal an interrupted run left behind."""
        entries = store.journal_read()
        if not entries:
            store.journal_close(remove=True)
            return [], []
        plog = log.bind(state=store.key)
        header = next((e for e in entries if e.get("op") == "begin"), None)
        roots: dict[str, RootHandle] = {}
        for name, ident in (header or {}).get("roots", {}).items():
            handle = reopen_root(name, RootIdentity(str(ident["path"]), int(ident["dev"]), int(ident["ino"])))
            if handle is not None:
                roots[name] = handle
        items: dict[int, _Undo] = {}
        for e in entries:
            op = e.get("op")
            if op in {"mount", "mkdir", "mkfile", "update"}:
                items[int(e["seq"])] = _Undo(
                    int(e["seq"]), str(op), str(e["root"]), str(e["path"]),
                    mnt_id=int(e.get("mnt_id", 0)), mount=str(e.get("mount", "")),
                    recursive=bool(e.get("recursive", False)), restore=e.get("restore"),
                )
            elif op == "created" and int(e["ref"]) in items:
                items[int(e["ref"])].dev, items[int(e["ref"])].ino = int(e["dev"]), int(e["ino"])
            elif op == "undone":
                items.pop(int(e["ref"]), None)
        undone: list[str] = []
        leftovers: list[str] = []
        store.journal_open({"recover": True, "roots": (header or {}).get("roots", {})})
        try:
            for item in sorted(items.values(), key=lambda i: i.seq, reverse=True):
                root = roots.get(item.root)
                if root is None:
                    leftovers.append(f"{item.describe()}: root {item.root!r} is gone or changed")
                    continue
                try:
                    self._undo_one(item, root)
                    undone.append(item.describe())
                    plog.info("recover.undone", item=item.describe())
                except Exception as exc:  # noqa: BLE001 - recover goes on; the leftover is reported
                    leftovers.append(f"{item.describe()}: {exc}")
        finally:
            for handle in roots.values():
                handle.close()
            store.journal_close(remove=False)
        if leftovers:
            # Keep only the items still to undo, so the next recover retries them.
            self._rewrite_journal(store, header, [i for i in items.values() if any(i.describe() in l for l in leftovers)])
            if raise_on_leftovers:
                raise ExecutionError(
                    "an earlier run was interrupted and its changes could not all be undone", leftovers=leftovers
                )
        else:
            store.journal_close(remove=True)
        return undone, leftovers

    @staticmethod
    def _rewrite_journal(store: StateStore, header: dict[str, Any] | None, items: list[_Undo]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(store.journal_path)
        store.journal_open({k: v for k, v in (header or {}).items() if k not in {"op", "seq"}})
        for item in sorted(items, key=lambda i: i.seq):
            seq = store.journal_write(
                {"op": item.op, "mount": item.mount, "root": item.root, "path": item.path, "mnt_id": item.mnt_id,
                 "recursive": item.recursive, **({"restore": item.restore} if item.restore is not None else {})}
            )
            if item.ino:
                store.journal_write({"op": "created", "ref": seq, "dev": item.dev, "ino": item.ino})
        store.journal_close(remove=False)

    # ================================================================== destroy

    def _unmount_managed(self, managed: ManagedMount, root: RootHandle, plog: Any) -> bool:
        """Unmount a managed mount if it is still ours and remove the mountpoints made for it.

        False when the mount was already gone. One parent fd serves the id check,
        the unmount and the rmdir of the mountpoint.
        """
        try:
            parent, name = resolve_parent(self.backend, root, managed.target)
        except KernelError as exc:
            if exc.errno not in {errno.ENOENT, errno.ENOTDIR}:
                raise
            plog.warning("destroy.gone", mount=managed.name, target=managed.target)
            self._remove_created(managed, root)
            return False
        try:
            ours = self._is_ours_at(parent, name, managed.mnt_id)
            if ours:
                self._umount(parent, name, managed.mnt_id, root, managed.target, recursive=managed.recursive)
                if _enabled(logging.INFO):
                    plog.info("mount.removed", mount=managed.name, target=f"{root.name}:{managed.target}")
            else:
                plog.warning("destroy.gone", mount=managed.name, target=managed.target)
            self._remove_created(managed, root, (parent, name))
        finally:
            parent.close()
        return ours

    def _remove_created(self, managed: ManagedMount, root: RootHandle, at: tuple[Fd, str] | None = None) -> None:
        """Remove the directories and files apply created for ``managed``, innermost first.

        ``at`` is the already-open parent of the target, reused for the target itself.
        """
        for index, item in reversed(list(enumerate(managed.created))):
            undo = _Undo(index, str(item["op"]), managed.root, str(item["path"]), dev=int(item["dev"]), ino=int(item["ino"]), mount=managed.name)
            try:
                self._undo_one(undo, root, at if at is not None and undo.path == managed.target else None)
            except ExecutionError as exc:
                # Something else (a foreign mount, a replaced directory) is there now.
                log.warning("destroy.kept_mountpoint", path=f"{root.name}:{item['path']}", reason=str(exc))
            except KernelError as exc:
                if exc.errno in {errno.ENOTEMPTY, errno.EBUSY}:
                    # Someone put files in it since; keeping their data beats tidiness.
                    log.warning("destroy.kept_mountpoint", path=f"{root.name}:{item['path']}", reason="not empty")
                    continue
                raise

    def _destroy_locked(self, plan_name: str, state: State, rootset: RootSet, store: StateStore) -> DestroyResult:
        plog = log.bind(plan=plan_name)
        removed: list[str] = []
        gone: list[str] = []
        try:
            for managed in list(reversed(state.mounts)):
                root = rootset.get(managed.root)
                if root is None:
                    raise RootError(f"root {managed.root!r} is needed to destroy mount {managed.name!r}")
                if self._unmount_managed(managed, root, plog):
                    removed.append(managed.name)
                else:
                    gone.append(managed.name)
                # Walking from the end, the mount just removed is always the last.
                assert state.mounts[-1] is managed
                state.mounts.pop()
        except MountplanError as exc:
            store.save(state)
            if isinstance(exc, BusyError):
                raise BusyError(
                    f"destroy {plan_name!r} stopped: {exc}", step=f"{managed.name}#00:unmount",
                    holders=exc.holders, leftovers=[m.name for m in state.mounts],
                ) from exc
            raise
        except OSError as exc:
            store.save(state)
            raise ExecutionError(f"destroy {plan_name!r} stopped at {managed.name!r}: {exc}") from exc
        store.save(state)
        return DestroyResult(plan_name, tuple(removed), tuple(gone))


_STEP_HANDLERS: dict[StepKind, Callable[..., None]] = {
    StepKind.FSOPEN: Engine._step_fsopen,
    StepKind.FSCONFIG: Engine._step_fsconfig,
    StepKind.CREATE: Engine._step_create,
    StepKind.FSMOUNT: Engine._step_fsmount,
    StepKind.OPEN_TREE: Engine._step_open_tree,
    StepKind.SET_ATTR: Engine._step_set_attr,
    StepKind.ENSURE_MOUNTPOINT: Engine._step_mountpoint,
    StepKind.RESOLVE_TARGET: Engine._step_resolve_target,
    StepKind.MOVE_MOUNT: Engine._step_move_mount,
    StepKind.SET_PROPAGATION: Engine._step_propagation,
}
