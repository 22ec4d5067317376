"""SIGKILL of `mountplan run` (no --unshare) at any moment: `recover` removes every mount it left (issue 10, item 12).

On main 7c7f03d recover left the committed mounts in 9 of 28 trials: a run killed
while its command ran had no journal, so recover had nothing to act on.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mountplan._kernel.emulation import active_profile
from mountplan._kernel.features import REQUIRED
from mountplan.livetable import read_live_table

_PROFILE = active_profile()
pytestmark = [
    pytest.mark.mountns,
    pytest.mark.kernelreach,
    pytest.mark.skipif(_PROFILE is not None and _PROFILE.takes_away(REQUIRED), reason="apply refuses under this profile"),
]

MOUNTPLAN = os.path.join(os.path.dirname(sys.executable), "mountplan")
TRIALS = 6
SEED = 20261129

PLAN = """\
version: 1
name: killed-run
roots:
  r: {}
mounts:
""" + "".join(
    f"  - {{name: t{i}, target: d{i % 3}/t{i}, type: tmpfs, options: {{size: 1M}}}}\n" for i in range(8)
)


def _mounted(root: str) -> int:
    return len(read_live_table().beneath(root))


def test_recover_after_a_killed_run_removes_every_mount(tmp_path: Path, root_dir: str) -> None:
    """Kill the run during apply or while its command runs; recover leaves nothing mounted under the root."""
    plan = tmp_path / "run.yaml"
    plan.write_text(PLAN)
    state = str(tmp_path / "state")
    rng = random.Random(SEED)
    outcomes: list[str] = []
    for trial in range(TRIALS):
        proc = subprocess.Popen(
            [MOUNTPLAN, "run", str(plan), "--root", f"r={root_dir}", "--state-dir", state, "--", "sleep", "30"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        if trial % 3 == 0:
            time.sleep(rng.uniform(0.0, 0.4))  # anywhere: start-up, apply or the command
        else:
            deadline = time.monotonic() + 20
            while _mounted(root_dir) < 8 and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))  # the command is running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        outcomes.append(f"trial {trial}: {_mounted(root_dir)} mounted when killed")
        rec = subprocess.run(
            [MOUNTPLAN, "recover", "--state-dir", state], capture_output=True, text=True, timeout=60, check=False
        )
        assert rec.returncode == 0, rec.stderr
        assert _mounted(root_dir) == 0, "\n".join(outcomes) + "\n" + rec.stderr
    assert any(" 8 mounted" in o for o in outcomes), outcomes
