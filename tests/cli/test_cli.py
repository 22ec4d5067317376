"""The mountplan command: exit codes, stdout/stderr discipline, clear errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mountplan.testing import mount_table_snapshot

REPO = Path(__file__).parents[2]
MOUNTPLAN = [sys.executable, "-m", "mountplan"]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOUNTPLAN, *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_validate_all_example_plans() -> None:
    """`mountplan validate plans/*.yaml` exits 0."""
    plans = sorted(str(p) for p in (REPO / "plans").glob("*.yaml"))
    result = run("validate", *plans)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid") == len(plans)


def test_validate_json_goes_to_stdout_only(tmp_path: Path) -> None:
    """--json prints one JSON document on stdout; an invalid plan exits 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nroots: {r: {}}\nmounts:\n  - {name: a, root: r, target: /abs, type: tmpfs}\n")
    result = run("validate", "--json", str(bad))
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert doc["results"][0]["valid"] is False
    assert doc["results"][0]["diagnostics"][0]["line"] == 5


def test_steps_and_graph_touch_nothing() -> None:
    """steps and graph render without roots or privileges and are deterministic."""
    a = run("steps", "plans/build-action.yaml")
    b = run("steps", "plans/build-action.yaml")
    assert a.returncode == 0 and a.stdout == b.stdout and "move_mount" in a.stdout
    for fmt in ("dot", "mermaid"):
        g = run("graph", "plans/nested.yaml", "--format", fmt)
        assert g.returncode == 0 and g.stdout.strip()


@pytest.mark.mountns
def test_apply_with_missing_root_exits_3_without_traceback(tmp_path: Path) -> None:
    """A root directory that does not exist: exit 3, one clear line, nothing changed."""
    before = mount_table_snapshot()
    result = run("apply", "plans/demo.yaml", "--root", f"sandbox={tmp_path}/missing", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 3
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr
    assert mount_table_snapshot() == before


@pytest.mark.mountns
def test_apply_bad_option_exits_4_with_kernel_text(tmp_path: Path) -> None:
    """A bad tmpfs option: exit 4; the message names mount, step and the kernel's reason."""
    plan = tmp_path / "p.yaml"
    plan.write_text(
        "version: 1\nname: bad\nroots: {r: {}}\nmounts:\n"
        "  - {name: good, root: r, target: good, type: tmpfs}\n"
        "  - {name: broken, root: r, target: broken, type: tmpfs, options: {size: huge}}\n"
    )
    root = tmp_path / "root"
    root.mkdir()
    before = mount_table_snapshot()
    result = run("apply", str(plan), "--root", f"r={root}", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 4, result.stderr
    assert "broken#02:fsconfig" in result.stderr
    assert "tmpfs: Bad value for 'size'" in result.stderr
    assert "Traceback" not in result.stderr
    assert mount_table_snapshot() == before
    assert os.listdir(root) == []


@pytest.mark.mountns
def test_apply_unknown_fs_type_is_a_plan_error(tmp_path: Path) -> None:
    """An fs type the kernel does not know is refused before anything happens (exit 2)."""
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\nname: u\nroots: {r: {}}\nmounts:\n  - {name: a, root: r, target: a, type: nosuchfs}\n")
    root = tmp_path / "root"
    root.mkdir()
    result = run("apply", str(plan), "--root", f"r={root}", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "nosuchfs" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(root) == []


@pytest.mark.mountns
def test_demo_plan_apply_destroy_restores_the_table(tmp_path: Path) -> None:
    """apply then destroy of plans/demo.yaml leaves the mount table exactly as it was."""
    root = tmp_path / "root"
    root.mkdir()
    common = ["--root", f"sandbox={root}", "--state-dir", str(tmp_path / "s")]
    before = mount_table_snapshot()
    applied = run("apply", "plans/demo.yaml", "--json", *common)
    assert applied.returncode == 0, applied.stderr
    assert sorted(json.loads(applied.stdout)["created"]) == ["proc", "scratch", "scratch-cache", "usr"]
    again = run("apply", "plans/demo.yaml", "--json", *common)
    assert json.loads(again.stdout)["created"] == []
    destroyed = run("destroy", "plans/demo.yaml", *common)
    assert destroyed.returncode == 0, destroyed.stderr
    assert mount_table_snapshot() == before
    assert os.listdir(root) == []


@pytest.mark.mountns
def test_root_as_inherited_fd(tmp_path: Path) -> None:
    """--root NAME=fd:N uses a directory fd opened by the calling program."""
    root = tmp_path / "root"
    root.mkdir()
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    common = ["--root", f"sandbox=fd:{fd}", "--state-dir", str(tmp_path / "s")]
    try:
        result = subprocess.run(
            [*MOUNTPLAN, "apply", "plans/demo.yaml", *common], cwd=REPO, pass_fds=(fd,), capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert (root / "proc" / "self").exists()
        result = subprocess.run(
            [*MOUNTPLAN, "destroy", "plans/demo.yaml", *common], cwd=REPO, pass_fds=(fd,), capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert os.listdir(root) == []
    finally:
        os.close(fd)


def test_log_format_json_goes_to_stderr(tmp_path: Path) -> None:
    """With --log-format json and -v, stderr carries JSON lines and stdout only the result."""
    result = run("validate", "-v", "--log-format", "json", "plans/demo.yaml")
    assert result.returncode == 0
    for line in result.stderr.splitlines():
        json.loads(line)
