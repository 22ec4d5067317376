"""Suite-wide harness: sandboxed mount tests and a host mount-table guard.

Tests marked ``mountns`` (or ``cgroupns``) run in a forked child inside fresh
namespaces: mountplan's own pytest plugin (mountplan/pytest_plugin.py, loaded
from its ``pytest11`` entry point) registers those markers and runs them, as it
does for users' tests; ``cgroupns`` tests run only in a new cgroup namespace
and are skipped where none can be made. Fixtures still run in the parent, so
fixtures must never mount. At the end every host mount must be
exactly what it was: the same mounts with the same mount options, super options
and propagation (a cgroup2 mount from the initial cgroup namespace changes the
host's cgroup2 super options without adding a mount). That check is the plugin's
host guard, switched on for this suite in pyproject.toml (``mountplan_host_guard``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from mountplan.testing import is_privileged


def pytest_configure(config: pytest.Config) -> None:
    # Without the plugin a mountns test would run unsandboxed, on the host's table.
    if config.pluginmanager.get_plugin("mountplan") is None:
        raise pytest.UsageError(
            "mountplan's pytest plugin is not loaded, so mountns tests would mount on the host: "
            "install mountplan into this environment (pip install -e .) and do not pass -p no:mountplan"
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    sandboxed = item.get_closest_marker("mountns") is not None or item.get_closest_marker("cgroupns") is not None
    if sandboxed and item.get_closest_marker("rootonly") is not None and not is_privileged():
        pytest.skip("needs root in the initial user namespace")


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
