"""pytest plugin: test your own mount plans in throwaway namespaces (entry point ``pytest11: mountplan``).

Installed with mountplan and loaded by pytest automatically (``-p no:mountplan``
turns it off). It adds:

``@pytest.mark.mountns``
    The test function runs in a forked child inside fresh namespaces (see
    :func:`mountplan.testing.run_in_sandbox`): mount and pid always; user, net
    and ipc too when unprivileged; cgroup whenever the kernel allows. Every
    mount it makes dies with the namespace. Fixtures still run in the pytest
    process, so a fixture must never mount; failures, skips and exceptions come
    back as if the test had run in place.
``@pytest.mark.cgroupns``
    As ``mountns``, but the test runs only in a new cgroup namespace (needed to
    mount cgroup2 without rewriting the machine-wide cgroup2 flags); it is
    skipped, with the kernel's reason, where none can be made.
``mountplan_root`` fixture
    An empty directory (mode 0755) to pass as a plan root.
``mountplan_sandbox`` fixture
    :func:`mountplan.testing.run_in_sandbox`, for running one function in
    throwaway namespaces from a test that is not itself sandboxed.
``--mountplan-host-guard`` option (or ini ``mountplan_host_guard = true``)
    Fail the session when the host's mount table changed (mounts, options,
    propagation), naming the first test after which it did.

See docs/testing-your-plans.md.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from mountplan import testing

__all__ = ["HostGuard"]

_MARKERS = (
    "mountns: run the test in throwaway mount/pid (unprivileged: also user/net/ipc) namespaces; mountplan plugin",
    "cgroupns: as mountns, only in a new cgroup namespace (skipped where none can be made); mountplan plugin",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mountplan", "mountplan sandbox")
    group.addoption(
        "--mountplan-host-guard",
        action="store_true",
        default=None,
        help="fail the session when the host's mount table changed, naming the test after which it did",
    )
    parser.addini("mountplan_host_guard", type="bool", default=False, help="as --mountplan-host-guard")


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)
    enabled = config.getoption("mountplan_host_guard")
    if enabled is None:
        enabled = config.getini("mountplan_host_guard")
    if enabled:
        config.pluginmanager.register(HostGuard(), "mountplan-host-guard")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    cgroupns = pyfuncitem.get_closest_marker("cgroupns") is not None
    if pyfuncitem.get_closest_marker("mountns") is None and not cgroupns:
        return None
    funcargs = pyfuncitem.funcargs
    kwargs: dict[str, Any] = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    try:
        testing.run_in_sandbox(pyfuncitem.obj, require_cgroupns=cgroupns, **kwargs)
    except testing.CgroupNamespaceUnavailable as exc:
        pytest.skip(f"mounts cgroup2, which is safe only from a new cgroup namespace: {exc}")
    return True


@pytest.fixture
def mountplan_root(tmp_path: pathlib.Path) -> str:
    """An empty directory (mode 0755) to use as a plan root; made here, mounted on in the sandbox."""
    path = tmp_path / "mountplan-root"
    path.mkdir()
    os.chmod(path, 0o755)
    return str(path)


@pytest.fixture
def mountplan_sandbox() -> Callable[..., Any]:
    """:func:`mountplan.testing.run_in_sandbox`: ``mountplan_sandbox(func, *args, **kwargs)`` returns func's result."""
    return testing.run_in_sandbox


class HostGuard:
    """Fails the session when the host's mount table changed; registered by ``--mountplan-host-guard``.

    The table is read after every test, so the report names the first test
    after which it changed, and a change undone later is still seen.
    """

    def __init__(self) -> None:
        self.start: list[testing.MountRecord] = []
        self.last: list[testing.MountRecord] = []
        self.culprits: list[tuple[str, list[str]]] = []

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.start = self.last = testing.read_mount_records()

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        now = testing.read_mount_records()
        if now != self.last:
            self.culprits.append((nodeid, testing.describe_mount_table_changes(self.last, now)))
            self.last = now

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        changes = testing.describe_mount_table_changes(self.start, testing.read_mount_records())
        if not changes and not self.culprits:
            return
        text = ["HOST MOUNT TABLE CHANGED by the tests", *changes]
        for nodeid, during in self.culprits:
            text.append(f"after {nodeid}:")
            text.extend(f"    {line}" for line in during)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line("\n".join(text), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
