"""cgroup2 from the initial cgroup namespace changes machine-wide flags: mountplan says so (issue 10)."""

from __future__ import annotations

import logging
import os

import pytest

from mountplan._kernel.namespaces import CloneFlag, in_initial_cgroup_namespace, unshare
from mountplan.engine.executor import warn_machine_wide
from mountplan.model import MountSpec, Plan, RootSpec

PLAN = Plan(name="cg", roots=(RootSpec("r"),), mounts=(MountSpec("cg", "r", "cg", fs_type="cgroup2"),))


def test_a_new_cgroup_namespace_is_not_the_initial_one() -> None:
    """The predicate follows the kernel's fixed inode of the initial namespace, and unshare leaves it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            before = in_initial_cgroup_namespace()
            expect = os.stat("/proc/thread-self/ns/cgroup").st_ino == 0xEFFFFFFB
            unshare(CloneFlag.NEWCGROUP | (CloneFlag.NEWUSER if os.geteuid() else CloneFlag(0)))
            os.write(write, f"{int(before == expect)}{int(in_initial_cgroup_namespace())}".encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 8).decode()
    os.waitpid(pid, 0)
    assert answer == "10"


def test_cgroup2_in_the_initial_namespace_warns(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """apply warns for a cgroup2 mount when (and only when) it runs in the initial cgroup namespace."""
    from mountplan.engine import executor

    for initial, warned in ((True, True), (False, False)):
        caplog.clear()
        monkeypatch.setattr(executor, "in_initial_cgroup_namespace", lambda initial=initial: initial)
        with caplog.at_level(logging.WARNING, logger="mountplan"):
            warn_machine_wide(PLAN)
        assert any("cgroup2.machine_wide" in r.getMessage() for r in caplog.records) is warned
