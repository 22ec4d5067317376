"""A saved plan records where its state lives: the hint `plan -o` prints is a command that works.

Each test mounts a tmpfs over /run in its sandbox first, so that the default
state directory (/run/mountplan) is a throwaway one: a regression that falls
back to the default writes nothing on the host, and the tests can see it did.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mountplan.engine.saved import FORMAT_VERSION, SavedPlan, read_saved_plan
from mountplan.livetable import read_live_table
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

MOUNTPLAN = [sys.executable, "-m", "mountplan"]

PLAN = """\
version: 1
name: saved-dir
roots:
  r: {}
mounts:
  - name: a
    target: a
    type: tmpfs
    options: {size: 1M}
"""

MORE = PLAN + """\
  - name: b
    target: a/b
    type: tmpfs
    attrs: [noexec]
"""

DEFAULT_STATE = "/run/mountplan"


def mp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOUNTPLAN, *args], capture_output=True, text=True, check=False, cwd=cwd)


def _private_run() -> None:
    """A throwaway /run in this sandbox (and XDG_RUNTIME_DIR under it), so the default state dir is harmless."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "mp-test-run", "/run"], check=True)
    os.environ["XDG_RUNTIME_DIR"] = "/run"


def _points(root_dir: str) -> list[tuple[str, str]]:
    return [(m.mount_point, m.fs_type) for m in read_live_table().beneath(root_dir)]


def _hint(stdout: str) -> list[str]:
    """The command `plan -o` told the user to run, as argv."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.rstrip().endswith("run:"))
    return shlex.split(lines[at + 1])


def _state_files(state: Path) -> list[str]:
    return sorted(n for n in os.listdir(state) if n.endswith(".state.json")) if state.is_dir() else []


def test_the_printed_hint_applies_with_the_recorded_state_dir(tmp_path: Path, root_dir: str) -> None:
    """`plan -o F --state-dir D` prints `mountplan apply F`; exactly that command (run from the same
    directory, with no --state-dir) applies the plan against the state in D: first on a fresh state,
    then after an earlier apply (the case that used to exit 8 "another apply ran")."""
    _private_run()
    plan, state, out = tmp_path / "saved plan.yaml", tmp_path / "state", tmp_path / "my plan.json"
    plan.write_text(PLAN)
    run = ["--root", f"r={root_dir}", "--state-dir", str(state)]

    shown = mp("plan", str(plan), *run, "-o", out.name, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    hint = _hint(shown.stdout)
    assert hint == ["mountplan", "apply", out.name], shown.stdout
    saved = read_saved_plan(str(out))
    assert saved is not None and saved.state_dir == str(state)
    first = mp(*hint[1:], cwd=tmp_path)
    assert first.returncode == 0 and "1 created" in first.stdout, first.stderr
    assert _points(root_dir) == [(f"{root_dir}/a", "tmpfs")]
    assert len(_state_files(state)) == 1 and _state_files(Path(DEFAULT_STATE)) == []

    # With state already in D: the saved plan's digest is D's, and the hint still works.
    plan.write_text(MORE)
    shown = mp("plan", str(plan), *run, "-o", out.name, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    second = mp(*_hint(shown.stdout)[1:], cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "1 created" in second.stdout and "1 unchanged" in second.stdout, second.stdout
    assert _points(root_dir) == [(f"{root_dir}/a", "tmpfs"), (f"{root_dir}/a/b", "tmpfs")]
    assert _state_files(Path(DEFAULT_STATE)) == []
    assert mp("destroy", str(plan), *run).returncode == 0
    assert _points(root_dir) == []


def test_relative_state_dir_is_recorded_absolute(tmp_path: Path, root_dir: str) -> None:
    """`--state-dir state` (relative) is recorded as an absolute path: the saved plan applies from elsewhere."""
    _private_run()
    plan, out = tmp_path / "p.yaml", tmp_path / "saved.json"
    plan.write_text(PLAN)
    shown = mp("plan", str(plan), "--root", f"r={root_dir}", "--state-dir", "state", "-o", str(out), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(out.read_text())
    assert doc["format_version"] == FORMAT_VERSION == 2 and doc["state_dir"] == str(tmp_path / "state")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = mp("apply", str(out), cwd=elsewhere)
    assert result.returncode == 0 and "1 created" in result.stdout, result.stderr
    assert len(_state_files(tmp_path / "state")) == 1 and not (elsewhere / "state").exists()
    assert mp("destroy", str(plan), "--root", f"r={root_dir}", "--state-dir", str(tmp_path / "state")).returncode == 0


def test_a_different_state_dir_is_refused_naming_the_recorded_one(tmp_path: Path, root_dir: str) -> None:
    """`apply F --state-dir E` for a plan saved with D: a usage error (exit 2) naming D and E, nothing
    done; the same state dir spelled differently (through a symlinked parent) is accepted. The Python API with another
    state_dir refuses with StalePlanError naming D, before the state digest is blamed."""
    import mountplan

    _private_run()
    plan, state, other, out = tmp_path / "p.yaml", tmp_path / "state", tmp_path / "other", tmp_path / "saved.json"
    plan.write_text(PLAN)
    run = ["--root", f"r={root_dir}", "--state-dir", str(state)]
    assert mp("apply", str(plan), *run).returncode == 0
    plan.write_text(MORE)
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    before = mount_table_snapshot()

    refused = mp("apply", str(out), "--state-dir", str(other))
    assert refused.returncode == 2, refused.stderr
    assert f"this saved plan's state lives in {state}" in refused.stderr, refused.stderr
    assert f"--state-dir {other}" in refused.stderr and "Traceback" not in refused.stderr
    assert mount_table_snapshot() == before and not other.exists()

    with pytest.raises(mountplan.StalePlanError) as stale:
        mountplan.apply_saved(out, state_dir=str(other))
    assert f"this saved plan's state lives in {state}; run with --state-dir {state}" in str(stale.value)
    assert "another apply" not in str(stale.value)
    assert mount_table_snapshot() == before

    alias = tmp_path / "alias"  # the state dir itself may not be a symlink; a parent may
    alias.symlink_to(tmp_path)
    same = mp("apply", str(out), "--state-dir", str(alias / "state"))
    assert same.returncode == 0 and "1 created" in same.stdout, same.stderr
    assert mp("destroy", str(plan), *run).returncode == 0


def test_stale_message_still_names_what_moved(tmp_path: Path, root_dir: str) -> None:
    """With the recorded state dir in use, a mount made beneath the root is still what the message
    names (exit 8), and a second apply of the same saved plan still says the state moved on."""
    _private_run()
    plan, state, out = tmp_path / "p.yaml", tmp_path / "state", tmp_path / "saved.json"
    plan.write_text(PLAN)
    run = ["--root", f"r={root_dir}", "--state-dir", str(state)]
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    os.mkdir(f"{root_dir}/x")
    subprocess.run(["mount", "-t", "tmpfs", "intruder", f"{root_dir}/x"], check=True)
    before = mount_table_snapshot()
    moved = mp("apply", str(out))
    assert moved.returncode == 8, moved.stderr
    assert f"+ {root_dir}/x (tmpfs intruder" in moved.stderr and "lives in" not in moved.stderr, moved.stderr
    assert mount_table_snapshot() == before
    subprocess.run(["umount", f"{root_dir}/x"], check=True)

    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    assert mp("apply", str(out)).returncode == 0
    again = mp("apply", str(out))
    assert again.returncode == 8 and "state for this plan changed" in again.stderr, again.stderr
    assert mp("destroy", str(plan), *run).returncode == 0


def test_format_1_saved_plan_still_reads(tmp_path: Path, root_dir: str) -> None:
    """A saved plan written before the state dir was recorded (format 1) reads as before, with no
    state dir: `apply F --state-dir D` applies it; written back it is format 2."""
    _private_run()
    plan, state, out = tmp_path / "p.yaml", tmp_path / "state", tmp_path / "saved.json"
    plan.write_text(PLAN)
    run = ["--root", f"r={root_dir}", "--state-dir", str(state)]
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    doc = json.loads(out.read_text())
    del doc["state_dir"]
    doc["format_version"] = 1
    out.write_text(json.dumps(doc))
    old = read_saved_plan(str(out))
    assert old is not None and old.state_dir is None
    assert SavedPlan.from_json(old.to_json(), filename=str(out)) == old
    result = mp("apply", str(out), "--state-dir", str(state))
    assert result.returncode == 0 and "1 created" in result.stdout, result.stderr
    assert mp("destroy", str(plan), *run).returncode == 0
