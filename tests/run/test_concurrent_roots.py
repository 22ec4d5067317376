"""Two `mountplan run --unshare` on one root: neither may pull the other's mounts away.

Each run is a plan instance of its own mount namespace, so they never shared the
instance lock. On main 03da668 the first run's destroy removed the mountpoint it
had created, which the second run had mounted on in its namespace: the kernel
detached the second run's mount under its running command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.mountns

MOUNTPLAN = os.path.join(os.path.dirname(sys.executable), "mountplan")
PLAN = """\
version: 1
name: shared-root
roots:
  r: {}
defaults:
  root: r
  propagation: private
mounts:
  - {name: scratch, target: scratch, type: tmpfs, options: {size: 1M}}
"""


def _run(plan: Path, root: Path, state: Path, script: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MOUNTPLAN, "run", str(plan), "--root", f"r={root}", "--state-dir", str(state), "-q", *extra,
         "--unshare", "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    root = tmp_path / "root"
    root.mkdir()
    return plan, root, tmp_path / "state"


def test_a_second_run_on_the_root_keeps_its_mount(tmp_path: Path) -> None:
    """The second run waits for the first to end; its mount stays while its command runs."""
    plan, root, state = _setup(tmp_path)
    point = f" {root}/scratch "
    first = _run(plan, root, state, "echo started; sleep 1")
    assert first.stdout is not None and first.stdout.readline() == "started\n"
    second = _run(plan, root, state, f"sleep 1.5; grep -q '{point}' /proc/self/mountinfo")
    out, err = second.communicate(timeout=60)
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert second.returncode == 0, f"the second run lost its mount: {out}{err}"
    assert os.listdir(root) == []


def test_a_run_that_cannot_wait_names_the_holder(tmp_path: Path) -> None:
    """With a short --lock-timeout the second run exits 6, naming the root and the holder's pid, having done nothing."""
    plan, root, state = _setup(tmp_path)
    first = _run(plan, root, state, "echo started; sleep 3")
    try:
        assert first.stdout is not None and first.stdout.readline() == "started\n"
        started = time.monotonic()
        second = _run(plan, root, state, "true", "--lock-timeout", "0.3")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 6, err
        assert "root 'r'" in err and "in use by another mountplan" in err and "pid " in err, err
        assert time.monotonic() - started < 20
    finally:
        first.kill()
        first.communicate(timeout=60)
