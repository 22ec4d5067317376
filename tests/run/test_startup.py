"""`mountplan run` starts lean: what a run at the default level never imports, and that its events still log when asked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mountns

#: Modules a run of a cached plan at the default log level has no use for.
HEAVY = (
    "structlog", "asyncio", "yaml", "jsonschema", "networkx", "ssl", "secrets", "difflib", "ctypes.util",
    "shutil",  # argparse asks it for the terminal width; cli._output asks os
    "datetime",  # only to stamp a log record
)
#: mountplan's modules for what this plan (one tmpfs, no idmap, no objects) and `run` do not use.
UNUSED = (
    "mountplan.api",  # the CLI loads through the loader
    "mountplan.engine.detached",
    "mountplan.engine.detached_steps",
    "mountplan.engine.idmap",
    "mountplan.engine.idmap_probe",
    "mountplan.engine.objects",
    "mountplan.engine.object_ops",
    "mountplan.object_changes",
    "mountplan.engine.saved",
    "mountplan.drawing",
    "mountplan.watch",
    "mountplan.serve",
    "mountplan.cli._completion_cmd",
    "mountplan.cli._schema_cmd",
    "mountplan.cli._serve_cmd",
    "mountplan.cli._watch_cmd",
)


def _mountplan(tmp_path: Path, *args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MOUNTPLAN_PLAN_CACHE": str(tmp_path / "cache")}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "mountplan", *args], capture_output=True, text=True, env=env, check=False
    )


def _imported(importtime_stderr: str) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", importtime_stderr, re.MULTILINE))


@pytest.mark.parametrize("unshare", [True, False], ids=["unshare", "here"])
def test_a_quiet_run_of_a_cached_plan_imports_nothing_heavy(
    small_plan_path: str, root_dir: str, state_dir: str, tmp_path: Path, unshare: bool
) -> None:
    """No structlog (nor asyncio behind it), no validators, no networkx: nothing is logged, the plan is cached."""
    args = ["run", small_plan_path, "--root", f"input={root_dir}", "--state-dir", state_dir]
    args += ["--unshare"] if unshare else []
    first = _mountplan(tmp_path, *args, "--", "/bin/true")  # validates and fills the cache
    assert first.returncode == 0, first.stderr
    result = _mountplan(tmp_path, *args, "--", "/bin/true", importtime=True)
    assert result.returncode == 0, result.stderr
    imported = _imported(result.stderr)
    assert "mountplan.runner" in imported  # the parse found the lines
    assert sorted(imported & set(HEAVY)) == []
    assert sorted(imported & set(UNUSED)) == []


def test_events_are_still_logged_when_the_level_asks(
    small_plan_path: str, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """With -v the same run logs its events through structlog, rendered as before (logfmt here)."""
    args = ["-v", "--log-format", "logfmt", "run", small_plan_path, "--root", f"input={root_dir}"]
    result = _mountplan(tmp_path, *args, "--state-dir", state_dir, "--", "/bin/true")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    created = [line for line in lines if line.startswith("event=mount.created ")]
    assert len(created) == 1 and "mount=scratch" in created[0] and "level=info" in created[0], result.stderr
    assert any(line.startswith("event=run.exited ") and "status=0" in line for line in lines), result.stderr
