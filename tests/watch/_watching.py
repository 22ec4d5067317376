"""Run ``mountplan.watch.watch`` on a thread inside a sandboxed test and read its events."""

from __future__ import annotations

import ctypes
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from mountplan._kernel import _libc
from mountplan.engine import Engine
from mountplan.model import Attr, MountSpec, Option, Plan, RootSpec
from mountplan.watch import EventKind, Mechanism, StopSignal, WatchEvent, WatchResult, detect_mechanism, watch

MS_RDONLY, MS_REMOUNT, MS_MOVE = 0x1, 0x20, 0x2000

#: Generous bound on "promptly": the measured latency is about a millisecond (bench/bench_watch.py).
PROMPT = 5.0

TMP = MountSpec("tmp", "r", "tmp", fs_type="tmpfs", options=(Option("size", "4M"),), attrs=frozenset({Attr.NOSUID}))
PLAN = Plan(name="watched", roots=(RootSpec("r"),), mounts=(TMP,))

MECHANISMS = [pytest.param(Mechanism.FANOTIFY, id="fanotify"), pytest.param(Mechanism.MOUNTINFO, id="mountinfo-poll")]


def require(mechanism: Mechanism) -> None:
    """Skip (with the kernel's reason) when this kernel or privilege cannot give ``mechanism``."""
    if mechanism is Mechanism.FANOTIFY:
        best, why = detect_mechanism()
        if best is not Mechanism.FANOTIFY:
            pytest.skip(f"no fanotify mount events here: {why}")


@dataclass
class Watcher:
    """A watch() running on a thread; events arrive on ``events``."""

    events: queue.Queue[WatchEvent] = field(default_factory=queue.Queue)
    seen: list[WatchEvent] = field(default_factory=list)
    stop: StopSignal = field(default_factory=StopSignal)
    result: list[WatchResult] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)

    def next(self, *kinds: EventKind, timeout: float = PROMPT) -> WatchEvent:
        """The next event of one of ``kinds`` (others are kept in ``seen``); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(left, 0))
            except queue.Empty:
                names = [(e.kind.value, e.changes.to_json() if e.changes else None) for e in self.seen]
                raise AssertionError(f"no {[k.value for k in kinds]} event within {timeout}s; saw {names}; {self.error}") from None
            self.seen.append(event)
            if event.kind in kinds:
                return event

    def drain(self) -> list[WatchEvent]:
        """Every event queued so far (also kept in ``seen``)."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                self.seen.extend(out)
                return out


@contextmanager
def watching(plan: Plan, roots: dict[str, str | int], state: str, **kwargs: Any) -> Iterator[Watcher]:
    """watch() on a thread until the block ends; re-raises whatever the thread raised."""
    watcher = Watcher()

    def run() -> None:
        try:
            watcher.result.append(
                watch(plan, roots, on_event=watcher.events.put, stop=watcher.stop, engine=Engine(state_dir=state), **kwargs)
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            watcher.error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        watcher.stop.set()
        thread.join(PROMPT)
        watcher.drain()
        watcher.stop.close()
    assert not thread.is_alive(), "watch() did not stop"
    if watcher.error:
        raise watcher.error[0]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _mount2(source: str | None, target: str, flags: int) -> None:
    if _libc.call(_libc.mount, None if source is None else source.encode(), target.encode(), None, flags, None) < 0:
        raise OSError(ctypes.get_errno(), f"mount(2) {source} {target} flags {flags:#x}")


def remount_ro(path: str) -> None:
    """mount(2) MS_REMOUNT|MS_RDONLY, as ``mount -o remount,ro`` does; called directly because
    mount(8) re-sends the options it reads back (uid=0, gid=0), which are unmapped in a user namespace."""
    _mount2(None, path, MS_REMOUNT | MS_RDONLY)


def move(source: str, target: str) -> None:
    """mount(2) MS_MOVE (mount(8) --move fails in a user namespace after moving, on its follow-up step)."""
    _mount2(source, target, MS_MOVE)


#: Hand-made drift: a name, the command run on the applied root, and what the diff must say.
DRIFTS: list[Any] = [
    pytest.param(lambda root: remount_ro(f"{root}/tmp"), "update", id="remount-ro"),
    pytest.param(lambda root: sh("umount", f"{root}/tmp"), "create", id="umount"),
    pytest.param(lambda root: sh("mount", "-t", "tmpfs", "intruder", f"{root}/tmp/x"), "foreign", id="foreign-beneath"),
]


def what_drifted(event: WatchEvent) -> set[str]:
    """The actions (and ``foreign``) a drift event carries."""
    assert event.changes is not None
    doc = event.changes.to_json()
    kinds = {c["action"] for c in doc["changes"] if c["action"] != "noop"}
    return kinds | ({"foreign"} if doc["foreign"] else set())


def make_drift(make: Callable[[str], None], root: str) -> None:
    """Run one hand-made drift; the foreign mount needs a directory inside the planned tmpfs."""
    import os

    os.makedirs(f"{root}/tmp/x", exist_ok=True)
    make(root)
