"""Server-side helpers for the worker-mode tests; called inside a sandboxed test body only."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

from _client import TIMEOUT

from mountplan import api
from mountplan.serve import Server

#: Whole-test bound, armed in the sandboxed child: SIGALRM's default action ends it.
TEST_BOUND = 60


@contextlib.contextmanager
def serving(plan_path: str, socket_path: str, state_dir: str) -> Iterator[Server]:
    """A server on ``socket_path`` in a thread of this (sandboxed) process; stopped and joined on exit."""
    signal.alarm(TEST_BOUND)
    server = Server(api.load(plan_path), socket_path, state_dir=state_dir)
    server.bind()
    thread = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the server did not stop"


def mount_points() -> set[str]:
    """Every mount point of this mount namespace (paths here never need mountinfo's octal escapes)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        return {line.split()[4] for line in file}


def mounted(root: str) -> set[str]:
    """The mount points strictly beneath ``root``, relative to it."""
    prefix = root.rstrip("/") + "/"
    return {point[len(prefix):] for point in mount_points() if point.startswith(prefix)}


def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded by TIMEOUT) until ``predicate()`` holds."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
