"""Fixtures for running commands inside applied plans: a static userland, small plans.

Fixtures run in the parent process and never mount; they only build directories.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import mountplan

REPO = Path(__file__).parents[2]
BUILD_ACTION = REPO / "plans" / "build-action.yaml"
APPLETS = ("sh", "cat", "touch", "echo", "grep", "test", "[", "ls", "readlink", "head")

SMALL_PLAN = """\
version: 1
name: run-small
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
"""


def _busybox() -> str:
    path = shutil.which("busybox")
    if path is None:
        # CI installs busybox-static (.ci/run); there a missing one is a broken setup.
        if os.environ.get("CI"):
            pytest.fail("busybox is not installed (apt-get install busybox-static)")
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    return path


@pytest.fixture
def userland(tmp_path: Path) -> str:
    """An input root holding a static busybox userland and a ``toolchain/`` with one tool."""
    root = tmp_path / "input"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(_busybox(), root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "toolchain").mkdir()
    (root / "toolchain" / "tool").write_text("tool-v1\n")
    os.chmod(root, 0o755)
    return str(root)


@pytest.fixture
def build_action() -> mountplan.Plan:
    """plans/build-action.yaml, loaded."""
    return mountplan.load(BUILD_ACTION)


@pytest.fixture
def small_plan_path(tmp_path: Path) -> str:
    """A one-mount plan file (a tmpfs at ``input:scratch``) for status and signal tests."""
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_PLAN)
    return str(path)


@pytest.fixture
def small_plan(small_plan_path: str) -> mountplan.Plan:
    """The one-mount plan, loaded."""
    return mountplan.load(small_plan_path)


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    """A private state directory, so tests never share locks or journals."""
    path = tmp_path / "state"
    path.mkdir()
    return str(path)
