"""What ``mountplan.watch`` reports and how it paces repairs: events, results, policy, stop signal.

Split from :mod:`mountplan.watch` (the loop) so the loop module stays one job;
everything here is re-exported there.
"""

from __future__ import annotations

import collections
import enum
import os
import select
from dataclasses import dataclass, field
from typing import Any

from mountplan.changes import ChangeSet

__all__ = [
    "FORMAT_VERSION",
    "EventKind",
    "Governor",
    "Mechanism",
    "ReconcilePolicy",
    "StopSignal",
    "WatchEvent",
    "WatchResult",
]

FORMAT_VERSION = 1


class Mechanism(enum.Enum):
    """How the watcher learns that the mount table changed."""

    FANOTIFY = "fanotify"
    MOUNTINFO = "mountinfo-poll"


class EventKind(enum.Enum):
    """What a :class:`WatchEvent` reports."""

    WATCHING = "watching"  # first event: mechanism, roots, policy
    DRIFT = "drift"  # the live table differs from the plan (emitted once per distinct diff)
    IN_SYNC = "in-sync"  # the live table matches the plan (at start, and after drift ends)
    RECONCILED = "reconciled"  # apply repaired the drift
    RECONCILE_FAILED = "reconcile-failed"  # apply raised; retried after a backoff
    THROTTLED = "throttled"  # a repair is due but the policy delays it
    ERROR = "error"  # the diff itself failed (a root vanished, a state file unreadable)
    STOPPED = "stopped"  # last event


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """Limits on repairs, so a fight with another writer cannot spin.

    * Rate limit: at most ``max_applies`` applies in any ``window`` seconds.
    * Backoff: the first repair of a drift is immediate. If drift comes back
      less than ``window`` seconds after the last apply (or the apply failed),
      the next repair waits ``backoff_initial`` seconds, then
      ``backoff_factor`` times longer each time, up to ``backoff_max``.
    * Reset: a repair that holds for ``window`` seconds ends the fight; the
      next drift is repaired at once again.

    While a repair waits, drift is still reported as it changes; a drift that
    goes away by itself cancels the pending repair.
    """

    max_applies: int = 5
    window: float = 60.0
    backoff_initial: float = 1.0
    backoff_factor: float = 2.0
    backoff_max: float = 300.0

    def __post_init__(self) -> None:
        if self.max_applies < 1:
            raise ValueError("ReconcilePolicy.max_applies must be at least 1")
        if self.window <= 0 or self.backoff_initial < 0 or self.backoff_factor < 1 or self.backoff_max < 0:
            raise ValueError(
                "ReconcilePolicy: window > 0, backoff_initial >= 0, backoff_factor >= 1, backoff_max >= 0"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "max_applies": self.max_applies,
            "window": self.window,
            "backoff_initial": self.backoff_initial,
            "backoff_factor": self.backoff_factor,
            "backoff_max": self.backoff_max,
        }


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One thing the watcher reports.

    ``monotonic`` is ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in
    every process of the machine) when the event was made; ``wall`` is
    ``time.time()``. Apply events also carry ``apply_started`` on that clock.
    """

    kind: EventKind
    seq: int
    mechanism: Mechanism
    plan: str
    monotonic: float
    wall: float
    changes: ChangeSet | None = None
    trigger: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as one JSON object (keys sorted when dumped)."""
        doc: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "event": self.kind.value,
            "seq": self.seq,
            "time": round(self.wall, 6),
            "monotonic": self.monotonic,
            "mechanism": self.mechanism.value,
            "plan": self.plan,
        }
        if self.trigger:
            doc["trigger"] = self.trigger
        doc.update(self.detail)
        if self.changes is not None:
            doc["changes"] = self.changes.to_json()
        return doc


@dataclass(frozen=True, slots=True)
class WatchResult:
    """What one ``watch()`` call did, counted."""

    mechanism: Mechanism
    checks: int
    drift_events: int
    applies: int
    failed_applies: int
    throttled: int


class StopSignal:
    """A pipe the watch loop polls: ``set()`` ends ``watch()`` promptly.

    ``set()`` only writes one byte, so it is safe from a signal handler and
    from another thread.
    """

    __slots__ = ("_read", "_write")

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        try:
            os.write(self._write, b"x")
        except BlockingIOError:  # already full of wake-ups: it is set
            pass

    def is_set(self) -> bool:
        return bool(select.select([self._read], [], [], 0)[0])

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass


class Governor:
    """The :class:`ReconcilePolicy` as state: when may the next apply start?"""

    def __init__(self, policy: ReconcilePolicy) -> None:
        self.policy = policy
        self.applies: collections.deque[float] = collections.deque()
        self.streak = 0  # applies in the current fight
        self.last_apply: float | None = None

    def on_drift(self, now: float) -> None:
        if self.last_apply is None or now - self.last_apply >= self.policy.window:
            self.streak = 0

    def earliest(self, now: float) -> float:
        policy = self.policy
        while self.applies and self.applies[0] <= now - policy.window:
            self.applies.popleft()
        start = now
        if len(self.applies) >= policy.max_applies:
            start = max(start, self.applies[0] + policy.window)
        if self.streak and self.last_apply is not None:
            delay = min(
                policy.backoff_initial * policy.backoff_factor ** (self.streak - 1), policy.backoff_max
            )
            start = max(start, self.last_apply + delay)
        return start

    def record(self, now: float) -> None:
        self.applies.append(now)
        self.last_apply = now
        self.streak += 1

    def in_window(self, now: float) -> int:
        return sum(1 for t in self.applies if t > now - self.policy.window)
