"""Planned objects through the CLI: plan shows them, a second apply changes nothing, status lists them,
destroy reports one the user replaced; every --json document fits its shipped schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

pytestmark = pytest.mark.mountns

SCHEMAS = Path(__file__).parents[2] / "mountplan" / "schema" / "output"

PLAN = """\
version: 1
name: objects-cli
roots:
  r: {}
mounts:
  - {name: tmp, target: tmp, type: tmpfs}
objects:
  - {name: work, path: work, directory: {mode: "0700"}}
  - {name: stamp, path: work/stamp, file: {mode: "0640"}}
  - {name: link, path: tmp/self, symlink: {target: /proc/self/fd}}
"""


def mp(tmp_path: Path, root_dir: str, *args: str, kind: str) -> tuple[int, dict[str, Any]]:
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN)
    command, *rest = args
    argv = [sys.executable, "-m", "mountplan", command, str(plan), *rest, "--root", f"r={root_dir}",
            "--state-dir", str(tmp_path / "state"), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    doc = json.loads(proc.stdout)
    jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{kind}.schema.json").read_text())).validate(doc)
    return proc.returncode, doc


def test_objects_round_trip_through_the_cli(tmp_path: Path, root_dir: str) -> None:
    """plan lists each object as +, apply makes them, the next plan is empty, status lists them, destroy removes them."""
    code, planned = mp(tmp_path, root_dir, "plan", kind="changes")
    assert code == 0
    assert {c["mount"]: (c["symbol"], c["target"]) for c in planned["changes"]} == {
        "tmp": ("+", "tmp"), "work": ("+", "work"), "stamp": ("+", "work/stamp"), "link": ("+", "tmp/self"),
    }
    code, applied = mp(tmp_path, root_dir, "apply", kind="apply")
    assert code == 0 and sorted(applied["created"]) == ["link", "stamp", "tmp", "work"]
    assert mp(tmp_path, root_dir, "plan", kind="changes")[1]["summary"] == {"add": 0, "change": 0, "destroy": 0}
    code, status = mp(tmp_path, root_dir, "status", kind="status")
    assert sorted(o["name"] for o in status["objects"]) == ["link", "stamp", "work"]
    code, destroyed = mp(tmp_path, root_dir, "destroy", kind="destroy")
    assert code == 0 and "kept" not in destroyed and sorted(destroyed["removed"]) == ["link", "stamp", "tmp", "work"]
    assert os.listdir(root_dir) == []


def test_a_replaced_object_is_reported_by_plan_and_destroy(tmp_path: Path, root_dir: str) -> None:
    """The user replaced our file: plan exits 4 naming it (apply would refuse), destroy keeps it and says why."""
    mp(tmp_path, root_dir, "apply", kind="apply")
    os.unlink(f"{root_dir}/work/stamp")
    Path(root_dir, "work", "stamp").write_text("theirs\n")
    code, planned = mp(tmp_path, root_dir, "plan", kind="changes")
    assert code == 4 and any(p.startswith("stamp (r:work/stamp): EEXIST") for p in planned["problems"])
    code, destroyed = mp(tmp_path, root_dir, "destroy", kind="destroy")
    assert code == 0 and len(destroyed["kept"]) == 2  # the file, and its directory (not empty now)
    assert Path(root_dir, "work", "stamp").read_text() == "theirs\n"
    subprocess.run(["rm", "-rf", f"{root_dir}/work"], check=True)
