"""mountplan watch: latency from a hand-made change to the drift event, and CPU used while idle.

For each mechanism (fanotify mount events, the mountinfo poll) a watch() runs on
a thread; the main thread unmounts the planned tmpfs (umount2, timed from just
before the call) and waits for the drift event, then re-applies and waits for
in-sync, ``--changes`` times. The latency is the event's CLOCK_MONOTONIC stamp
minus the change's: kernel wake-up plus one full diff (``Engine.plan``), whose
own median is printed alongside. Idle CPU is getrusage(RUSAGE_SELF) over
``--idle`` seconds with the watcher blocked and the main thread asleep.

Runs inside throwaway namespaces (mountplan.testing.run_in_sandbox), so nothing
reaches the host's mount table.

    .venv/bin/python bench/bench_watch.py [--changes 100] [--idle 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import resource
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from mountplan._kernel import _libc
from mountplan.engine import Engine
from mountplan.model import Attr, MountSpec, Option, Plan, RootSpec
from mountplan.testing import is_privileged, run_in_sandbox
from mountplan.watch import EventKind, Mechanism, StopSignal, WatchEvent, detect_mechanism, watch

PLAN = Plan(
    name="bench-watch",
    roots=(RootSpec("r"),),
    mounts=(MountSpec("tmp", "r", "tmp", fs_type="tmpfs", options=(Option("size", "4M"),), attrs=frozenset({Attr.NOSUID})),),
)
TIMEOUT = 10.0


def _next(events: queue.Queue[WatchEvent], kind: EventKind) -> WatchEvent:
    deadline = time.monotonic() + TIMEOUT
    while True:
        event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        if event.kind is kind:
            return event


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(mechanism: Mechanism, changes: int, idle: float, tmp: str) -> dict[str, Any]:
    """Inside the sandbox: latency of ``changes`` drifts and CPU over ``idle`` seconds, for one mechanism."""
    # ``tmp`` is made and removed by the caller, outside the sandbox: a mount in it would make rmdir fail.
    root, state = f"{tmp}/root", f"{tmp}/state"
    engine = Engine(state_dir=state)
    engine.apply(PLAN, {"r": root})
    diff_times = []
    for _ in range(20):
        start = time.perf_counter()
        engine.plan(PLAN, {"r": root})
        diff_times.append(time.perf_counter() - start)
    events: queue.Queue[WatchEvent] = queue.Queue()
    stop = StopSignal()
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(
            watch(PLAN, {"r": root}, on_event=events.put, stop=stop, engine=Engine(state_dir=state), mechanism=mechanism)
        )
    )
    thread.start()
    try:
        _next(events, EventKind.IN_SYNC)
        time.sleep(0.2)
        before = _cpu()
        time.sleep(idle)
        idle_cpu = _cpu() - before
        target = f"{root}/tmp".encode()
        latencies = []
        for _ in range(changes):
            made = time.monotonic()
            if _libc.umount2(target, 0) != 0:
                raise RuntimeError("umount2 failed")
            latencies.append(_next(events, EventKind.DRIFT).monotonic - made)
            engine.apply(PLAN, {"r": root})
            _next(events, EventKind.IN_SYNC)
    finally:
        stop.set()
        thread.join()
        stop.close()
    return {
        "mechanism": result[0].mechanism.value if result else mechanism.value,
        "latency_median_ms": statistics.median(latencies) * 1e3,
        "latency_p90_ms": statistics.quantiles(latencies, n=10)[-1] * 1e3,
        "latency_max_ms": max(latencies) * 1e3,
        "diff_median_ms": statistics.median(diff_times) * 1e3,
        "idle_cpu_ms": idle_cpu * 1e3,
        "idle_seconds": idle,
        "checks": result[0].checks if result else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    logging.getLogger("mountplan").setLevel(logging.ERROR)  # the watcher's drift warnings are the point, not output
    best, why = detect_mechanism()
    print(f"kernel {os_release()}, {'root' if is_privileged() else 'unprivileged (user namespace)'}, {args.changes} changes per mechanism")
    mechanisms = [Mechanism.FANOTIFY, Mechanism.MOUNTINFO]
    for mechanism in mechanisms:
        if mechanism is Mechanism.FANOTIFY and best is not Mechanism.FANOTIFY:
            print(f"{mechanism.value:15} unavailable: {why}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(f"{tmp}/root")
            r = run_in_sandbox(measure, mechanism, args.changes, args.idle, tmp)
        print(
            f"{r['mechanism']:15} change->drift event: median {r['latency_median_ms']:.3f} ms, "
            f"p90 {r['latency_p90_ms']:.3f} ms, max {r['latency_max_ms']:.3f} ms "
            f"(of which one diff: median {r['diff_median_ms']:.3f} ms); "
            f"idle CPU {r['idle_cpu_ms']:.3f} ms over {r['idle_seconds']:g} s"
        )
    return 0


def os_release() -> str:
    return os.uname().release


if __name__ == "__main__":
    sys.exit(main())
