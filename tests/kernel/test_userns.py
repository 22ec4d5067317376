"""make_userns: the helper child it forks is released by make_userns itself, whatever else forks meanwhile."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from mountplan._kernel import userns
from mountplan._kernel.fd import Fd

# A sandbox (user + mount namespace) where uid 0 exists to be mapped; nothing is mounted.
pytestmark = pytest.mark.mountns


def _fork_holder() -> int:
    """A child that keeps a copy of every fd of ours (as any fork does) until it is killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only blocks until SIGKILL
        try:
            while True:
                signal.pause()
        finally:
            os._exit(0)
    return pid


def test_a_fork_in_another_thread_does_not_keep_make_userns_waiting() -> None:
    """Another thread forks while make_userns runs: its child inherits the release pipe, make_userns still returns."""
    holders: list[int] = []
    made: list[Fd] = []
    real_proc_pid = userns._proc_pid

    def fork_elsewhere(pid: int) -> int:
        # The helper child is waiting on the release pipe now: another thread forks
        # (a second make_userns, a runner's helper), and its child holds our write end.
        other = threading.Thread(target=lambda: holders.append(_fork_holder()))
        other.start()
        other.join()
        return real_proc_pid(pid)

    userns._proc_pid = fork_elsewhere  # type: ignore[assignment]
    worker = threading.Thread(target=lambda: made.append(userns.make_userns("1 0 1\n", "1 0 1\n")), daemon=True)
    try:
        worker.start()
        worker.join(10.0)
        hung = worker.is_alive()
    finally:
        userns._proc_pid = real_proc_pid  # type: ignore[assignment]
        for pid in holders:  # with the bug, the holder's end is what finally lets the helper child go
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        worker.join()
    assert holders, "the other thread did not fork"
    assert not hung, "make_userns waited for a child that another fork kept alive"
    assert len(made) == 1
    made[0].close()
