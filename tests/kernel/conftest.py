"""Kernel-reach fixtures: the emulated profile in force, and a forked child to probe in.

A seccomp filter can never be removed, so tests install theirs only in a forked
child (``forked``), never in the pytest process. When the whole run sits under
``scripts/emulate-kernel PROFILE``, ``kernel_profile`` names that profile so a
test can branch on it; filters stack, and for a syscall both deny the innermost
filter's errno wins.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from mountplan._kernel.emulation import Profile, active_profile


@pytest.fixture
def kernel_profile() -> str | None:
    """Name of the emulated kernel profile this run is under (MOUNTPLAN_KERNEL_PROFILE), or None."""
    profile = active_profile()
    return profile.name if profile is not None else None


@pytest.fixture
def outer_profile() -> Profile | None:
    """The emulated profile this run is under, or None on the real kernel."""
    return active_profile()


def run_forked(func: Callable[[], Any]) -> Any:
    """Run ``func`` in a forked child and return its result; the child's exception is re-raised as text."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        try:
            payload = ("ok", func())
        except BaseException:  # noqa: BLE001 - relayed to the parent
            payload = ("error", traceback.format_exc())
        try:
            data = pickle.dumps(payload)
        except Exception:  # noqa: BLE001 - an unpicklable result travels as text
            data = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(write_fd, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"forked child died without a report (status {status:#x})")
    kind, value = pickle.loads(data)
    if kind != "ok":
        raise AssertionError(f"in the forked child:\n{value}")
    return value


@pytest.fixture
def forked() -> Callable[[Callable[[], Any]], Any]:
    """``forked(func)`` runs ``func`` in a forked child (install filters there) and returns its result."""
    return run_forked
