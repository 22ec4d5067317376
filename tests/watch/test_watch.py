"""mountplan.watch on the real kernel: drift is reported promptly, repaired under a rate limit, idle costs nothing."""

from __future__ import annotations

import itertools
import math
import os
import resource
import threading
import time
from pathlib import Path

import pytest
from _watching import DRIFTS, MECHANISMS, PLAN, PROMPT, make_drift, require, sh, watching, what_drifted

from mountplan._kernel import _libc
from mountplan.engine import Engine
from mountplan.errors import KernelError, RootError
from mountplan.livetable import read_live_table
from mountplan.watch import EventKind, Mechanism, ReconcilePolicy, StopSignal, WatchEvent, watch

pytestmark = pytest.mark.mountns


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize(("make", "expected"), DRIFTS)
def test_hand_made_drift_is_reported_promptly(
    tmp_path: Path, root_dir: str, mechanism: Mechanism, make: object, expected: str
) -> None:
    """A remount, an unmount or a foreign mount beneath the root gives one drift event within PROMPT seconds."""
    require(mechanism)
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(PLAN, {"r": root_dir})
    with watching(PLAN, {"r": root_dir}, state, mechanism=mechanism) as watcher:
        first = watcher.next(EventKind.WATCHING)
        assert first.mechanism is mechanism and first.seq == 1
        watcher.next(EventKind.IN_SYNC)
        made = time.monotonic()
        make_drift(make, root_dir)  # type: ignore[arg-type]
        drift = watcher.next(EventKind.DRIFT)
        assert drift.monotonic - made < PROMPT
        assert expected in what_drifted(drift)
        doc = drift.to_json()
        assert doc["format_version"] == 1 and doc["event"] == "drift" and doc["mechanism"] == mechanism.value
    # Report only: nothing was repaired.
    assert not any(e.kind is EventKind.RECONCILED for e in watcher.seen)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_fanotify_trigger_names_the_detached_mount(tmp_path: Path, root_dir: str, mechanism: Mechanism) -> None:
    """With fanotify the drift event names the unmounted mount's unique id; the poll path names only mountinfo."""
    require(mechanism)
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(PLAN, {"r": root_dir})
    mnt_id = read_live_table().at(f"{root_dir}/tmp")[-1].mnt_id
    with watching(PLAN, {"r": root_dir}, state, mechanism=mechanism) as watcher:
        watcher.next(EventKind.IN_SYNC)
        sh("umount", f"{root_dir}/tmp")
        trigger = watcher.next(EventKind.DRIFT).trigger
    if mechanism is Mechanism.FANOTIFY:
        assert {"mask": "MNT_DETACH", "mnt_id": mnt_id} in trigger["fanotify"]
    else:
        assert trigger == {"mountinfo": True}


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize(("make", "expected"), DRIFTS[:2])
def test_reconcile_repairs_drift(tmp_path: Path, root_dir: str, mechanism: Mechanism, make: object, expected: str) -> None:
    """With reconcile, drift is followed by one apply and an in-sync event; the live mount is as planned again."""
    require(mechanism)
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(PLAN, {"r": root_dir})
    with watching(PLAN, {"r": root_dir}, state, mechanism=mechanism, reconcile=True) as watcher:
        watcher.next(EventKind.IN_SYNC)
        make_drift(make, root_dir)  # type: ignore[arg-type]
        watcher.next(EventKind.DRIFT)
        fixed = watcher.next(EventKind.RECONCILED, EventKind.RECONCILE_FAILED)
        assert fixed.kind is EventKind.RECONCILED, fixed.detail
        watcher.next(EventKind.IN_SYNC)
    assert not Engine(state_dir=state).plan(PLAN, {"r": root_dir}).has_changes
    with open(f"{root_dir}/tmp/written", "w") as f:  # writable again: the ro remount was undone at both levels
        f.write("ok")


def test_foreign_mount_is_reported_not_fought(tmp_path: Path, root_dir: str) -> None:
    """A foreign mount beneath the root is drift to report, but apply never touches it, so reconcile does not try."""
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(PLAN, {"r": root_dir})
    with watching(PLAN, {"r": root_dir}, state, reconcile=True) as watcher:
        watcher.next(EventKind.IN_SYNC)
        make_drift(DRIFTS[2].values[0], root_dir)
        assert "foreign" in what_drifted(watcher.next(EventKind.DRIFT))
        time.sleep(0.3)
    assert not [e for e in watcher.seen if e.kind in {EventKind.RECONCILED, EventKind.RECONCILE_FAILED}]


def _apply_starts(events: list[WatchEvent]) -> list[float]:
    """When each apply of the watch started (the event itself is made once its apply has ended)."""
    kinds = {EventKind.RECONCILED, EventKind.RECONCILE_FAILED}
    return [e.detail["apply_started"] for e in events if e.kind in kinds]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_fight_is_rate_limited_and_backs_off(tmp_path: Path, root_dir: str, mechanism: Mechanism) -> None:
    """Another writer unmounting the planned tmpfs every 10 ms for 3 s gets a handful of applies, not hundreds.

    Applies never exceed ``max_applies`` in any ``window``, consecutive applies are
    spaced by at least the backoff delay, and the delays are announced as throttled.
    """
    require(mechanism)
    policy = ReconcilePolicy(max_applies=3, window=1.0, backoff_initial=0.1, backoff_factor=2.0, backoff_max=0.4)
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(PLAN, {"r": root_dir})
    target = f"{root_dir}/tmp".encode()
    fighting = threading.Event()
    fighting.set()
    made = [0]

    def fight() -> None:
        while fighting.is_set():
            if _libc.umount2(target, 2) == 0:  # MNT_DETACH: never EBUSY while apply looks at it
                made[0] += 1
            time.sleep(0.01)

    duration = 3.0
    with watching(PLAN, {"r": root_dir}, state, mechanism=mechanism, reconcile=True, policy=policy) as watcher:
        watcher.next(EventKind.IN_SYNC)
        fighter = threading.Thread(target=fight)
        fighter.start()
        time.sleep(duration)
        fighting.clear()
        fighter.join()
        watcher.drain()
    times = _apply_starts(watcher.seen)
    assert made[0] >= len(times) - 1  # the fight happened: each apply was undone
    assert len(times) >= 2
    # Rate limit: no window holds more than max_applies applies.
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + policy.window) <= policy.max_applies, times
    assert len(times) <= policy.max_applies * math.ceil(duration / policy.window + 1)
    # Backoff: the k-th gap is at least min(initial * factor**(k-1), max).
    for k, (a, b) in enumerate(itertools.pairwise(times), start=1):
        delay = min(policy.backoff_initial * policy.backoff_factor ** (k - 1), policy.backoff_max)
        assert b - a >= delay, (k, times)
    assert any(e.kind is EventKind.THROTTLED for e in watcher.seen)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_idle_watch_uses_no_cpu(tmp_path: Path, root_dir: str, mechanism: Mechanism) -> None:
    """While nothing changes the watcher blocks: under 20 ms of CPU in 1 s, and not one diff."""
    require(mechanism)
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(PLAN, {"r": root_dir})
    with watching(PLAN, {"r": root_dir}, state, mechanism=mechanism, reconcile=True) as watcher:
        watcher.next(EventKind.IN_SYNC)
        time.sleep(0.1)  # let the thread reach poll()
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 0.02, cpu
    assert watcher.result[0].checks == 1  # the start check only


def test_stop_ends_the_watch_promptly_with_a_stopped_event(tmp_path: Path, root_dir: str) -> None:
    """StopSignal.set() from another thread ends a blocked watch(); the last event is 'stopped'."""
    state = str(tmp_path / "s")
    with watching(PLAN, {"r": root_dir}, state) as watcher:
        watcher.next(EventKind.DRIFT)  # never applied: the plan's mount is a pending create
        started = time.monotonic()
    assert time.monotonic() - started < PROMPT
    assert watcher.seen[-1].kind is EventKind.STOPPED
    assert [e.seq for e in watcher.seen] == list(range(1, len(watcher.seen) + 1))


def test_without_fanotify_it_falls_back_and_says_why(
    tmp_path: Path, root_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When fanotify cannot be had (a pre-6.15 kernel: EINVAL), the poll is used and the first event says why."""
    import errno

    import mountplan.watch as watch_module

    def refuse(namespace: str = "") -> object:
        raise KernelError(errno.EINVAL, "fanotify_init", flags="REPORT_MNT", hint="this kernel has no FAN_REPORT_MNT")

    monkeypatch.setattr(watch_module, "open_mount_namespace_watch", refuse)
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(PLAN, {"r": root_dir})
    with watching(PLAN, {"r": root_dir}, state) as watcher:
        first = watcher.next(EventKind.WATCHING)
        watcher.next(EventKind.IN_SYNC)
        sh("umount", f"{root_dir}/tmp")
        watcher.next(EventKind.DRIFT)
    assert first.mechanism is Mechanism.MOUNTINFO
    assert "EINVAL" in first.detail["fallback"]
    with pytest.raises(KernelError, match="EINVAL"):
        watch(PLAN, {"r": root_dir}, on_event=lambda e: None, stop=StopSignal(), mechanism=Mechanism.FANOTIFY)


def test_a_vanished_root_is_an_error_event_and_the_watch_goes_on(tmp_path: Path, root_dir: str) -> None:
    """A diff that fails (the root directory is gone) is reported once, and the watch keeps running."""
    state = str(tmp_path / "s")
    root = f"{root_dir}/inner"
    os.mkdir(root)
    Engine(state_dir=state).apply(PLAN, {"r": root})
    with watching(PLAN, {"r": root}, state) as watcher:
        watcher.next(EventKind.IN_SYNC)
        sh("umount", f"{root}/tmp")
        watcher.next(EventKind.DRIFT)
        os.rmdir(f"{root}/tmp")
        os.rmdir(root)
        other = tmp_path / "other"
        other.mkdir()
        sh("mount", "-t", "tmpfs", "elsewhere", str(other))  # any change wakes the watcher
        error = watcher.next(EventKind.ERROR)
        assert error.detail["error_type"] == "RootError"
        sh("umount", str(other))
        time.sleep(0.2)
    assert sum(e.kind is EventKind.ERROR for e in watcher.seen) == 1
    assert watcher.seen[-1].kind is EventKind.STOPPED


def test_a_missing_root_at_start_raises_before_any_event(tmp_path: Path, root_dir: str) -> None:
    """A root missing when the watch starts is raised (RootError), not retried: no event, not even 'watching'."""
    events: list[WatchEvent] = []
    stop = StopSignal()

    def on_event(event: WatchEvent) -> None:
        events.append(event)
        if event.kind is EventKind.ERROR:
            stop.set()  # a watch that retries would run forever: end it, so the test fails instead of hanging

    try:
        with pytest.raises(RootError, match="does not exist"):
            watch(PLAN, {"r": f"{root_dir}/missing"}, on_event=on_event, stop=stop, engine=Engine(state_dir=str(tmp_path / "s")))
    finally:
        stop.close()
    assert events == []


def test_a_lock_held_at_start_is_waited_out(tmp_path: Path, root_dir: str) -> None:
    """Only plan, root and state errors are fatal at start: a held state lock is an error event, retried."""
    state = str(tmp_path / "s")
    store, _ = Engine(state_dir=state).load_state(PLAN, {"r": root_dir})
    engine = Engine(state_dir=state, lock_timeout=0.05)
    events: list[WatchEvent] = []
    stop = StopSignal()
    thread = threading.Thread(target=lambda: watch(PLAN, {"r": root_dir}, on_event=events.append, stop=stop, engine=engine))
    try:
        with store.locked(1.0):
            thread.start()
            deadline = time.monotonic() + PROMPT
            while not any(e.kind is EventKind.ERROR for e in events) and time.monotonic() < deadline:
                time.sleep(0.01)
        deadline = time.monotonic() + PROMPT
        while not any(e.kind is EventKind.DRIFT for e in events) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(PROMPT)
        stop.close()
    kinds = [e.kind for e in events]
    assert kinds[:2] == [EventKind.WATCHING, EventKind.ERROR], kinds
    assert events[1].detail["error_type"] == "LockError"
    assert EventKind.DRIFT in kinds and kinds[-1] is EventKind.STOPPED  # never applied: the retry sees a pending create


def test_resync_catches_what_no_event_reports(tmp_path: Path, root_dir: str) -> None:
    """mount --make-shared signals nothing (see test_fanotify.py); with a resync interval it is still reported."""
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(PLAN, {"r": root_dir})
    with watching(PLAN, {"r": root_dir}, state, resync_interval=0.2) as watcher:
        watcher.next(EventKind.IN_SYNC)
        sh("mount", "--make-shared", f"{root_dir}/tmp")
        drift = watcher.next(EventKind.DRIFT)
    assert drift.trigger == {"resync": True}
    assert drift.changes is not None and "propagation" in {f.field for c in drift.changes.changes for f in c.fields}


DOC = Path(__file__).parents[2] / "docs" / "watch.md"


def test_the_documented_example_runs(tmp_path: Path, root_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/watch.md's Python example repairs a never-applied plan and prints the events it shows."""
    import re

    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    exec(compile(block, str(DOC), "exec"), {"ROOT": root_dir, "STATE": str(tmp_path / "s")})  # noqa: S102 - our own doc
    printed = capsys.readouterr().out.strip()
    assert printed == "['watching', 'drift', 'reconciled', 'in-sync', 'stopped']"
    assert os.path.ismount(f"{root_dir}/tmp")
