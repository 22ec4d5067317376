"""Fixtures for the worker-mode tests: a small plan file, roots, socket and state paths.

Fixtures run in the pytest process and never mount; each test starts its server
inside its own sandboxed body (see _serving.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PLAN = """\
version: 1
name: serve-test
roots:
  input: {}
defaults:
  root: input
  propagation: private
mounts:
  - name: scratch
    target: scratch
    type: tmpfs
    options: {size: 1M, mode: "0755"}
  - name: inner
    target: scratch/inner
    type: tmpfs
    options: {size: 1M, mode: "0700"}
"""


@pytest.fixture
def plan_path(tmp_path: Path) -> str:
    """The plan every test server serves: a tmpfs with a second tmpfs inside it."""
    path = tmp_path / "serve-test.yaml"
    path.write_text(PLAN)
    return str(path)


@pytest.fixture
def roots(tmp_path: Path) -> list[str]:
    """Three empty input roots (mode 0755)."""
    made = []
    for name in ("a", "b", "c"):
        path = tmp_path / "roots" / name
        path.mkdir(parents=True)
        os.chmod(path, 0o755)
        made.append(str(path))
    return made


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    """Where the server listens (not created here)."""
    return str(tmp_path / "mountplan.sock")


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    """The server's state directory."""
    return str(tmp_path / "state")
