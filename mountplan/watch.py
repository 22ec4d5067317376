"""Keep a plan true: wait for mount-table changes, re-diff, report drift or repair it.

``watch(plan, roots, on_event=...)`` blocks (``poll(2)``, no timer unless a
resync interval is set) until the mount namespace changes, then recomputes the
diff with :meth:`Engine.plan` and reports what it finds through ``on_event``;
with ``reconcile=True`` it repairs drift with :meth:`Engine.apply`, under a
:class:`ReconcilePolicy` so a fight with another writer cannot spin.

Change sources, chosen once at start and named in the first event:

``fanotify`` (Linux 6.15+)
    a ``FAN_REPORT_MNT`` group marked on the mount namespace reports every
    mount attached or detached, with its unique id. It does not report a
    remount, ``mount_setattr`` or a propagation change (seen on 6.18), so the
    mountinfo poll below is always watched as well.
``mountinfo-poll`` (every kernel)
    ``poll()`` on ``/proc/self/mountinfo`` returns ``POLLPRI|POLLERR`` after any
    change to the namespace's table; the poll itself re-arms it
    (fs/proc_namespace.c ``mounts_poll``), so no read is needed.

Neither source sees a superblock reconfigured through ``fspick`` +
``FSCONFIG_CMD_RECONFIGURE`` (e.g. a tmpfs resized that way): the mount table
does not change. ``resync_interval`` re-diffs on a timer to catch that.

Every event is a :class:`WatchEvent`; ``to_json()`` is the line ``mountplan
watch --json`` prints (``format_version`` 1).
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import select
import time
from collections.abc import Callable, Mapping
from typing import Any

from mountplan._kernel.fanotify import MountEvent, open_mount_namespace_watch, read_mount_events
from mountplan._log import EventLogger, structured_logger
from mountplan._watchtypes import (
    FORMAT_VERSION,
    EventKind,
    Governor,
    Mechanism,
    ReconcilePolicy,
    StopSignal,
    WatchEvent,
    WatchResult,
)
from mountplan.changes import ChangeSet
from mountplan.engine import Engine
from mountplan.errors import (
    CompileError,
    FeatureMissingError,
    KernelError,
    MountplanError,
    PlanError,
    RootError,
    StateError,
)
from mountplan.model import Plan

__all__ = [
    "FORMAT_VERSION",
    "EventKind",
    "Mechanism",
    "ReconcilePolicy",
    "StopSignal",
    "WatchEvent",
    "WatchResult",
    "detect_mechanism",
    "watch",
]

MOUNTINFO = "/proc/self/mountinfo"
#: At most this many fanotify records are named in one event's trigger.
_TRIGGER_LIMIT = 16
#: A failed diff is retried after 1 s, doubling up to 60 s, until one succeeds.
_ERROR_RETRY = 1.0
_ERROR_RETRY_MAX = 60.0
#: What the start-up diff raises instead of retrying (docs/watch.md: as ``mountplan plan``
#: exits): no retry fixes a wrong plan, root or state directory, or an old kernel.
#: A held lock or a passing kernel error is retried like any later error.
_FATAL_AT_START = (PlanError, CompileError, RootError, StateError, FeatureMissingError)

_events: EventLogger = structured_logger(logging.getLogger("mountplan"))


def detect_mechanism() -> tuple[Mechanism, str]:
    """The best mechanism this process can use, and why fanotify is not it (empty when it is)."""
    try:
        open_mount_namespace_watch().close()
    except KernelError as exc:
        return Mechanism.MOUNTINFO, str(exc)
    return Mechanism.FANOTIFY, ""


class _Sources:
    """The fds the loop waits on, and what each wake-up was about."""

    def __init__(self, wanted: Mechanism | None) -> None:
        self.fallback = ""
        self.fanotify: int | None = None
        if wanted is not Mechanism.MOUNTINFO:
            try:
                self.fanotify = open_mount_namespace_watch().detach()
            except KernelError as exc:
                if wanted is Mechanism.FANOTIFY:
                    raise
                self.fallback = str(exc)
        self.mechanism = Mechanism.FANOTIFY if self.fanotify is not None else Mechanism.MOUNTINFO
        try:
            # Opened before the first diff: the poll state starts at the table
            # we are about to read, so no change in between is lost.
            self.mountinfo = os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.close()
            raise KernelError(
                exc.errno or errno.ENOENT, "open", paths=[MOUNTINFO], hint="is /proc mounted?"
            ) from exc

    def register(self, poller: select.poll) -> None:
        poller.register(self.mountinfo, select.POLLPRI)  # POLLERR is always reported
        if self.fanotify is not None:
            poller.register(self.fanotify, select.POLLIN)

    def drain(self, ready: Mapping[int, int]) -> dict[str, Any]:
        """What woke us: the fanotify records (drained) and whether mountinfo signalled."""
        trigger: dict[str, Any] = {}
        if ready.get(self.mountinfo, 0) & (select.POLLPRI | select.POLLERR):
            trigger["mountinfo"] = True
        if self.fanotify is not None and ready.get(self.fanotify, 0) & select.POLLIN:
            events: list[MountEvent] = read_mount_events(self.fanotify)
            if events:
                trigger["fanotify"] = [e.to_json() for e in events[:_TRIGGER_LIMIT]]
                if len(events) > _TRIGGER_LIMIT:
                    trigger["fanotify_more"] = len(events) - _TRIGGER_LIMIT
        return trigger

    def close(self) -> None:
        for fd in (self.fanotify, getattr(self, "mountinfo", None)):
            if fd is not None:
                os.close(fd)
        self.fanotify = None


def _committed_diff(engine: Engine, plan: Plan, roots: Mapping[str, str | int]) -> ChangeSet:
    """``engine.plan()`` under the instance's state lock.

    The diff reads the state file as well as the mount table. An apply (ours
    or another process's) attaches its mounts before it commits the state
    file, and the commit itself signals nothing: a diff taken in between calls
    the new mounts foreign and would stay the last word. Under the lock a diff
    sees only committed states. (Never hold it across ``engine.apply``, which
    takes it itself: flock on a second open file would wait forever.)
    """
    store, _ = engine.load_state(plan, roots)
    with store.locked(engine.lock_timeout):
        return engine.plan(plan, roots)


def _try_diff(engine: Engine, plan: Plan, roots: Mapping[str, str | int]) -> ChangeSet | MountplanError:
    try:
        return _committed_diff(engine, plan, roots)
    except MountplanError as exc:
        return exc


def _fingerprint(changes: ChangeSet) -> str:
    return json.dumps(changes.to_json(), sort_keys=True)


def _is_out_of_sync(changes: ChangeSet) -> bool:
    return changes.has_changes or bool(changes.foreign)


def watch(
    plan: Plan,
    roots: Mapping[str, str | int] | None = None,
    *,
    on_event: Callable[[WatchEvent], None],
    reconcile: bool = False,
    stop: StopSignal | None = None,
    state_dir: str | None = None,
    engine: Engine | None = None,
    mechanism: Mechanism | None = None,
    policy: ReconcilePolicy | None = None,
    resync_interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> WatchResult:
    """Watch this process's mount namespace until ``stop`` is set; report (or repair) drift.

    ``mechanism`` None picks fanotify where the kernel and privilege allow it,
    else the mountinfo poll (the reason is in the first event's ``fallback``);
    ``Mechanism.MOUNTINFO`` forces the poll; ``Mechanism.FANOTIFY`` raises
    :class:`KernelError` when fanotify cannot be used. ``on_event`` runs in
    this thread, synchronously; an exception from it ends the watch.

    Drift is any planned change or a foreign mount beneath a root; it is
    reported once per distinct diff. With ``reconcile`` the changes (not
    foreign mounts, which apply never touches) are applied under ``policy``.

    The first diff runs before any event: a :class:`PlanError`,
    :class:`CompileError`, :class:`RootError`, :class:`StateError` or
    :class:`FeatureMissingError` from it is raised, with no event sent. Any
    later failed diff is an ``error`` event, retried with backoff.
    """
    policy = policy or ReconcilePolicy()
    engine = engine or Engine(state_dir=state_dir)
    roots = dict(roots or {})
    sources = _Sources(mechanism)
    governor = Governor(policy)
    counts = collections.Counter[str]()
    seq = 0

    def emit(
        kind: EventKind,
        *,
        changes: ChangeSet | None = None,
        trigger: dict[str, Any] | None = None,
        **detail: Any,
    ) -> None:
        nonlocal seq
        seq += 1
        counts[kind.value] += 1
        on_event(
            WatchEvent(
                kind,
                seq,
                sources.mechanism,
                plan.name,
                clock(),
                time.time(),
                changes=changes,
                trigger=trigger or {},
                detail=detail,
            )
        )

    poller = select.poll()
    sources.register(poller)
    if stop is not None:
        poller.register(stop.fileno(), select.POLLIN)
    last_seen: str | None = None  # fingerprint of the last reported state
    last_error: str | None = None
    pending: float | None = None  # when a delayed repair is due
    error_at: float | None = None  # when a failed diff is tried again
    error_delay = 0.0
    resync_at = None if not resync_interval else clock() + resync_interval
    try:
        # The change sources are open already, so nothing that happens during this diff is lost.
        outcome: ChangeSet | MountplanError | None = _try_diff(engine, plan, roots)
        if isinstance(outcome, _FATAL_AT_START):
            raise outcome
        _events.info(
            "watch.started",
            plan=plan.name,
            mechanism=sources.mechanism.value,
            fallback=sources.fallback or None,
        )
        emit(
            EventKind.WATCHING,
            roots={k: str(v) for k, v in sorted(roots.items())},
            reconcile=reconcile,
            fallback=sources.fallback or None,
            policy=policy.to_json() if reconcile else None,
            resync_interval=resync_interval or None,
        )
        trigger: dict[str, Any] = {"start": True}
        while True:
            counts["checks"] += 1
            if outcome is None:
                outcome = _try_diff(engine, plan, roots)
            changes, outcome = outcome, None
            if isinstance(changes, MountplanError):
                exc = changes
                # Retry on a timer too: a lock held by a long apply, or a root
                # coming back, may be signalled by nothing.
                error_delay = min(error_delay * 2, _ERROR_RETRY_MAX) if error_delay else _ERROR_RETRY
                error_at = clock() + error_delay
                if str(exc) != last_error:
                    last_error = str(exc)
                    _events.warning("watch.error", plan=plan.name, error=last_error)
                    emit(
                        EventKind.ERROR,
                        trigger=trigger,
                        error=last_error,
                        error_type=type(exc).__name__,
                        retry_in=error_delay,
                    )
                last_seen = None
            else:
                last_error, error_at, error_delay = None, None, 0.0
                now = clock()
                fingerprint = _fingerprint(changes)
                if not _is_out_of_sync(changes):
                    pending = None
                    if fingerprint != last_seen:
                        emit(EventKind.IN_SYNC, trigger=trigger, changes=changes)
                elif fingerprint != last_seen:
                    governor.on_drift(now)
                    counts["drift_events"] += 1
                    _events.warning(
                        "watch.drift", plan=plan.name, summary=changes.summary(), foreign=len(changes.foreign)
                    )
                    emit(EventKind.DRIFT, trigger=trigger, changes=changes, drift=changes.has_drift)
                last_seen = fingerprint
                if reconcile and changes.has_changes:
                    due = governor.earliest(now)
                    if due <= now:
                        pending = None
                        started = clock()
                        governor.record(started)
                        try:
                            result = engine.apply(plan, roots)
                        except MountplanError as exc:
                            counts["failed_applies"] += 1
                            now = clock()
                            pending = governor.earliest(now)
                            _events.warning("watch.reconcile_failed", plan=plan.name, error=str(exc))
                            emit(
                                EventKind.RECONCILE_FAILED,
                                error=str(exc),
                                error_type=type(exc).__name__,
                                apply_started=started,
                                apply_seconds=round(now - started, 6),
                                retry_in=round(pending - now, 3),
                            )
                        else:
                            counts["applies"] += 1
                            now = clock()
                            _events.info(
                                "watch.reconciled",
                                plan=plan.name,
                                created=result.created,
                                updated=result.updated,
                                replaced=result.replaced,
                            )
                            emit(
                                EventKind.RECONCILED,
                                created=list(result.created),
                                updated=list(result.updated),
                                replaced=list(result.replaced),
                                apply_started=started,
                                apply_seconds=round(now - started, 6),
                                applies_in_window=governor.in_window(now),
                            )
                            # Look again at once: apply may have changed nothing the kernel signals.
                            trigger = {"after_apply": True}
                            continue
                    elif pending is None:
                        pending = due
                        counts["throttled"] += 1
                        _events.warning("watch.throttled", plan=plan.name, retry_in=round(due - now, 3))
                        emit(
                            EventKind.THROTTLED,
                            retry_in=round(due - now, 3),
                            streak=governor.streak,
                            applies_in_window=governor.in_window(now),
                        )
            # Wait: forever, or until a delayed repair or a resync is due.
            trigger = {}
            while not trigger:
                if stop is not None and stop.is_set():
                    break
                deadlines = [t for t in (pending, resync_at, error_at) if t is not None]
                timeout_ms = None if not deadlines else max(0, int((min(deadlines) - clock()) * 1000) + 1)
                ready = dict(poller.poll(timeout_ms))
                if stop is not None and stop.fileno() in ready:
                    break
                trigger = sources.drain(ready)
                now = clock()
                if pending is not None and now >= pending:
                    trigger["retry"] = True
                if resync_at is not None and now >= resync_at:
                    trigger["resync"] = True
                if error_at is not None and now >= error_at:
                    trigger["error_retry"] = True
                if resync_at is not None and trigger:
                    resync_at = now + (resync_interval or 0)
            else:
                continue
            break  # stop was set
        emit(EventKind.STOPPED)
        _events.info("watch.stopped", plan=plan.name)
        return _result(sources.mechanism, counts)
    finally:
        sources.close()


def _result(mechanism: Mechanism, counts: collections.Counter[str]) -> WatchResult:
    return WatchResult(
        mechanism=mechanism,
        checks=counts["checks"],
        drift_events=counts["drift_events"],
        applies=counts["applies"],
        failed_applies=counts["failed_applies"],
        throttled=counts["throttled"],
    )
