"""The per-instance state lock: a second run waits up to lock_timeout, then names the holder."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _plans
import pytest

from mountplan.engine import Engine
from mountplan.engine.backend import KernelBackend
from mountplan.engine.state import StateStore
from mountplan.errors import LockError
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

PLAN = _plans.tmpfs_plan(30, name="locked", fanout=5)


def _fork(body: Callable[[int], None]) -> tuple[int, int]:
    """Run ``body(write_fd)`` in a child; return its pid and the read end of its pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(read_fd)
            body(write_fd)
        except BaseException:  # noqa: BLE001 - any failure becomes the exit code the parent checks
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _hold_lock(state_dir: str, key: str, seconds: float) -> tuple[int, int]:
    """A child that takes the instance lock, says so on its pipe, sleeps, and exits."""

    def body(write_fd: int) -> None:
        with StateStore(state_dir, key).locked(5.0):
            os.write(write_fd, b"locked\n")
            time.sleep(seconds)

    pid, read_fd = _fork(body)
    assert os.read(read_fd, 16) == b"locked\n"
    return pid, read_fd


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _key(state_dir: str, root_dir: str) -> str:
    store, _ = Engine(state_dir=state_dir).load_state(PLAN, {"r": root_dir})
    return store.key


def test_second_apply_times_out_naming_the_holder(root_dir: str, tmp_path: Path) -> None:
    """While another process holds the lock, apply waits lock_timeout, then raises LockError naming its pid.

    Nothing is mounted or created by the refused apply.
    """
    state_dir = str(tmp_path / "state")
    holder, pipe = _hold_lock(state_dir, _key(state_dir, root_dir), 5.0)
    table = mount_table_snapshot()
    start = time.monotonic()
    with pytest.raises(LockError) as info:
        Engine(state_dir=state_dir, lock_timeout=0.5).apply(PLAN, {"r": root_dir})
    waited = time.monotonic() - start
    assert 0.5 <= waited < 3.0, waited
    assert f"pid {holder}:" in str(info.value), str(info.value)
    assert "waited 0.5s" in str(info.value)
    assert mount_table_snapshot() == table and os.listdir(root_dir) == []
    os.kill(holder, 9)
    os.waitpid(holder, 0)
    os.close(pipe)


def test_second_apply_with_longer_timeout_runs_after_the_holder_exits(root_dir: str, tmp_path: Path) -> None:
    """With a timeout longer than the hold, apply waits for the holder to exit, then applies every mount."""
    state_dir = str(tmp_path / "state")
    holder, pipe = _hold_lock(state_dir, _key(state_dir, root_dir), 1.0)
    start = time.monotonic()
    result = Engine(state_dir=state_dir, lock_timeout=10.0).apply(PLAN, {"r": root_dir})
    waited = time.monotonic() - start
    assert _exit_code(holder) == 0
    os.close(pipe)
    assert 0.8 <= waited < 5.0, waited
    assert len(result.created) == 30
    Engine(state_dir=state_dir).destroy(PLAN, {"r": root_dir})


class _SlowBackend:
    """Sleeps before every move_mount, so an apply holds the lock for a while."""

    def __init__(self, delay: float) -> None:
        self._inner = KernelBackend()
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        func = getattr(self._inner, name)
        if name != "move_mount":
            return func

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            time.sleep(self.delay)
            return func(*args, **kwargs)

        return wrapper


def test_two_concurrent_applies(root_dir: str, tmp_path: Path) -> None:
    """Of two applies racing on one state, the second is refused with the first's pid, or waits and finds
    every mount already made (30 unchanged), never a half-applied state.
    """
    state_dir = str(tmp_path / "state")
    table = mount_table_snapshot()

    def first(write_fd: int) -> None:
        engine = Engine(backend=_SlowBackend(0.05), state_dir=state_dir)
        os.write(write_fd, b"start\n")
        engine.apply(PLAN, {"r": root_dir})

    pid, pipe = _fork(first)
    assert os.read(pipe, 16) == b"start\n"
    lock_path = StateStore(state_dir, _key(state_dir, root_dir)).lock_path
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until the first apply has written its pid in the lock file
        if os.path.exists(lock_path) and Path(lock_path).read_text().startswith(f"pid {pid}:"):
            break
        time.sleep(0.005)
    with pytest.raises(LockError, match=f"pid {pid}:"):
        Engine(state_dir=state_dir, lock_timeout=0.2).apply(PLAN, {"r": root_dir})
    result = Engine(state_dir=state_dir, lock_timeout=20.0).apply(PLAN, {"r": root_dir})
    assert _exit_code(pid) == 0
    os.close(pipe)
    assert result.created == () and len(result.unchanged) == 30
    Engine(state_dir=state_dir).destroy(PLAN, {"r": root_dir})
    assert mount_table_snapshot() == table
