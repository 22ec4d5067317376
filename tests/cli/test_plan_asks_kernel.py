"""`mountplan plan` asks the kernel about new mounts, changing nothing (issue 12 item 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

MOUNTPLAN = os.path.join(os.path.dirname(sys.executable), "mountplan")

PLAN = """\
version: 1
name: asks
roots:
  r: {}
mounts:
  - {name: scratch, target: scratch, type: tmpfs, options: {size: 12Q}}
  - {name: missing, target: missing, bind: {path: /nonexistent-mountplan-source}}
"""


def test_plan_exits_4_naming_what_the_kernel_refuses(tmp_path: Path, root_dir: str) -> None:
    """validate accepts the plan (offline); plan shows the kernel's verdict and exits 4; nothing changes."""
    plan = tmp_path / "asks.yaml"
    plan.write_text(PLAN)
    assert subprocess.run([MOUNTPLAN, "validate", str(plan)], capture_output=True, check=False).returncode == 0
    before = mount_table_snapshot()
    proc = subprocess.run(
        [MOUNTPLAN, "plan", str(plan), "--root", f"r={root_dir}", "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "the kernel refuses scratch (r:scratch)" in proc.stdout and "size" in proc.stdout
    assert "the kernel refuses missing (r:missing)" in proc.stdout
    assert "Apply would fail" in proc.stdout
    assert mount_table_snapshot() == before and os.listdir(root_dir) == []
