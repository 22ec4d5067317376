"""Saved plans: `mountplan plan -o FILE` then `mountplan apply FILE` does exactly that, or exits 8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mountplan.engine.saved import SavedPlan, read_saved_plan
from mountplan.livetable import read_live_table
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

MOUNTPLAN = [sys.executable, "-m", "mountplan"]

PLAN = """\
version: 1
name: saved
roots:
  r: {}
mounts:
  - name: a
    target: a
    type: tmpfs
    options: {size: 1M}
  - name: b
    target: a/b
    type: tmpfs
    attrs: [noexec]
"""


def mp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOUNTPLAN, *args], capture_output=True, text=True, check=False)


def _setup(tmp_path: Path, root_dir: str, text: str = PLAN) -> tuple[Path, list[str], Path]:
    plan = tmp_path / "p.yaml"
    plan.write_text(text)
    return plan, ["--root", f"r={root_dir}", "--state-dir", str(tmp_path / "state")], tmp_path / "saved.json"


def _points(root_dir: str) -> list[tuple[str, str]]:
    return [(m.mount_point, m.fs_type) for m in read_live_table().beneath(root_dir)]


def test_round_trip_applies_exactly_the_saved_plan(tmp_path: Path, root_dir: str) -> None:
    """The saved file reads back to the same object; applying it makes the reviewed mounts, even
    after the YAML was edited (the plan text is embedded), and `--json` shows the same change set."""
    plan, run, out = _setup(tmp_path, root_dir)
    shown = mp("plan", str(plan), *run, "--json", "-o", str(out))
    assert shown.returncode == 0, shown.stderr
    saved = read_saved_plan(str(out))
    assert saved is not None
    assert SavedPlan.from_json(json.loads(out.read_text()), filename=str(out)) == saved
    assert saved.changes == json.loads(shown.stdout)
    assert [c["mount"] for c in saved.changes["changes"] if c["action"] == "create"] == ["a", "b"]

    plan.write_text(PLAN.replace("size: 1M", "size: 2M").replace("attrs: [noexec]", "attrs: [ro]"))
    result = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 0, result.stderr
    assert "2 created" in result.stdout
    assert _points(root_dir) == [(f"{root_dir}/a", "tmpfs"), (f"{root_dir}/a/b", "tmpfs")]
    live = {m.mount_point: m for m in read_live_table().beneath(root_dir)}
    assert "size=1024k" in live[f"{root_dir}/a"].super_options  # the saved text, not the edited file
    # A saved plan of "no changes" applies as a no-op.
    plan.write_text(PLAN)
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    again = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert again.returncode == 0 and "2 unchanged" in again.stdout, again.stderr
    assert mp("destroy", str(plan), *run).returncode == 0


def test_stale_when_a_mount_appears_under_the_root(tmp_path: Path, root_dir: str) -> None:
    """A mount made beneath the root after `plan -o`: exit 8 naming it, and nothing changes."""
    plan, run, out = _setup(tmp_path, root_dir)
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    os.mkdir(f"{root_dir}/x")
    subprocess.run(["mount", "-t", "tmpfs", "intruder", f"{root_dir}/x"], check=True)
    before = mount_table_snapshot()
    result = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 8, result.stderr
    assert f"+ {root_dir}/x (tmpfs intruder" in result.stderr and "Traceback" not in result.stderr
    assert mount_table_snapshot() == before
    assert not (tmp_path / "state").exists() or not any(n.endswith(".state.json") for n in os.listdir(tmp_path / "state"))


def test_stale_after_drift_of_a_managed_mount(tmp_path: Path, root_dir: str) -> None:
    """A managed mount remounted read-only after `plan -o`: exit 8 naming the changed field."""
    plan, run, out = _setup(tmp_path, root_dir)
    assert mp("apply", str(plan), *run).returncode == 0
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    subprocess.run(["mount", "-o", "remount,bind,ro", f"{root_dir}/a"], check=True)
    before = mount_table_snapshot()
    result = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 8, result.stderr
    assert f"~ {root_dir}/a (id" in result.stderr and "attrs" in result.stderr
    assert mount_table_snapshot() == before
    # Planned afresh, the drift is an in-place update that the new saved plan fixes.
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    fixed = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert fixed.returncode == 0 and "1 updated" in fixed.stdout, fixed.stderr
    assert mp("destroy", str(plan), *run).returncode == 0


def test_stale_when_state_changed_or_root_replaced(tmp_path: Path, root_dir: str) -> None:
    """Applying the same saved plan twice is refused (the state moved on); so is a root that is
    now another directory at the same path."""
    plan, run, out = _setup(tmp_path, root_dir)
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    assert mp("apply", str(out), "--state-dir", str(tmp_path / "state")).returncode == 0
    second = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert second.returncode == 8 and "state for this plan changed" in second.stderr, second.stderr
    assert mp("destroy", str(plan), *run).returncode == 0

    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    os.rename(root_dir, root_dir + ".old")
    os.mkdir(root_dir)
    moved = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert moved.returncode == 8 and "not the directory the plan was made for" in moved.stderr, moved.stderr
    assert os.listdir(root_dir) == [] and os.listdir(root_dir + ".old") == []


def test_prune_is_part_of_the_saved_plan(tmp_path: Path, root_dir: str) -> None:
    """Without --prune a mount dropped from the plan is listed as kept and survives the saved apply;
    with `plan --prune -o` it is a '-' change and the saved apply removes it. `apply FILE --prune` is a usage error."""
    plan, run, out = _setup(tmp_path, root_dir)
    assert mp("apply", str(plan), *run).returncode == 0
    plan.write_text(PLAN.split("  - name: b")[0])
    kept = mp("plan", str(plan), *run, "-o", str(out))
    assert "no longer in the plan; kept" in kept.stdout and "No changes." in kept.stdout, kept.stdout
    assert mp("apply", str(out), "--prune", "--state-dir", str(tmp_path / "state")).returncode == 2
    assert mp("apply", str(out), "--state-dir", str(tmp_path / "state")).returncode == 0
    assert (f"{root_dir}/a/b", "tmpfs") in _points(root_dir)

    pruned = mp("plan", str(plan), *run, "--prune", "-o", str(out))
    assert "0 to add, 0 to change, 1 to destroy" in pruned.stdout, pruned.stdout
    result = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 0 and "1 pruned" in result.stdout, result.stderr
    assert _points(root_dir) == [(f"{root_dir}/a", "tmpfs")]
    assert mp("destroy", str(plan), *run).returncode == 0


def test_tampered_saved_plan_is_a_plan_error(tmp_path: Path, root_dir: str) -> None:
    """A saved plan whose embedded text was edited by hand: exit 2, FILE:1:1 message, nothing done."""
    plan, run, out = _setup(tmp_path, root_dir)
    assert mp("plan", str(plan), *run, "-o", str(out)).returncode == 0
    doc = json.loads(out.read_text())
    doc["plan"]["text"] = doc["plan"]["text"].replace("1M", "9M")
    out.write_text(json.dumps(doc))
    result = mp("apply", str(out), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{out}:1:1: error: not a usable saved plan") and "sha256" in result.stderr
    assert _points(root_dir) == []


def test_api_save_and_apply_saved(tmp_path: Path, root_dir: str) -> None:
    """The Python API: save_plan returns the change set it saved; apply_saved applies it once,
    then raises StalePlanError; a YAML file is not a saved plan."""
    import mountplan

    plan, _, out = _setup(tmp_path, root_dir)
    state = str(tmp_path / "state")
    changes = mountplan.save_plan(str(plan), out, {"r": root_dir}, state_dir=state)
    assert changes.counts() == (2, 0, 0)
    assert mountplan.apply_saved(out, state_dir=state).created == ("a", "b")
    with pytest.raises(mountplan.StalePlanError):
        mountplan.apply_saved(out, state_dir=state)
    with pytest.raises(mountplan.PlanError):
        mountplan.apply_saved(plan, state_dir=state)
    mountplan.destroy(str(plan), {"r": root_dir}, state_dir=state)
    assert _points(root_dir) == []
