"""Suite-wide harness: sandboxed mount tests and a host mount-table guard.

Tests marked ``mountns`` run in a forked child inside fresh namespaces (see
mountplan.testing). Fixtures still run in the parent, so fixtures must never
mount. At the end the host's mount table must be exactly what it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from mountplan.testing import is_privileged, mount_table_snapshot, run_in_sandbox

_HOST_TABLE: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _HOST_TABLE[:] = mount_table_snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    after = mount_table_snapshot()
    if after != _HOST_TABLE:
        added = sorted(set(after) - set(_HOST_TABLE))
        removed = sorted(set(_HOST_TABLE) - set(after))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "HOST MOUNT TABLE CHANGED by the test suite\n" + "\n".join(
            [f"+ {line}" for line in added] + [f"- {line}" for line in removed]
        )
        if reporter is not None:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.get_closest_marker("mountns") is None:
        return None
    if pyfuncitem.get_closest_marker("rootonly") is not None and not is_privileged():
        pytest.skip("needs root in the initial user namespace")
    funcargs = pyfuncitem.funcargs
    kwargs: dict[str, Any] = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    run_in_sandbox(pyfuncitem.obj, **kwargs)
    return True


@pytest.fixture
def privileged() -> bool:
    """Whether the suite runs as real root (else inside a user namespace)."""
    return is_privileged()


@pytest.fixture
def root_dir(tmp_path: Any) -> Iterator[str]:
    """An empty directory to use as a plan root (made in the parent, mounted on in the child)."""
    path = tmp_path / "root"
    path.mkdir()
    os.chmod(path, 0o755)
    yield str(path)
