"""Every `--json` document has `format_version` and the shape its shipped JSON Schema documents; errors too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

REPO = Path(__file__).parents[2]
SCHEMAS = REPO / "mountplan" / "schema" / "output"
TMPFS_PLAN = (
    "version: 1\nname: jsonshape\nroots: {r: {}}\nmounts:\n"
    "  - {name: a, root: r, target: a, type: tmpfs}\n"
    "  - {name: b, root: r, target: a/b, type: tmpfs}\n"
)


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mountplan", *args], capture_output=True, text=True, cwd=REPO, check=False, input=stdin
    )


def document(result: subprocess.CompletedProcess[str], kind: str) -> dict[str, Any]:
    """stdout as one JSON document, checked against ``kind``'s shipped schema."""
    doc: dict[str, Any] = json.loads(result.stdout)
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert doc["format_version"] == 1
    return doc


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(TMPFS_PLAN)
    (tmp_path / "root").mkdir()
    return path


def common(tmp_path: Path) -> list[str]:
    return ["--root", f"r={tmp_path / 'root'}", "--state-dir", str(tmp_path / "state"), "--json"]


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.schema.json")), ids=lambda p: p.name)
def test_each_shipped_output_schema_is_a_valid_schema(path: Path) -> None:
    """Every schema under mountplan/schema/output is valid Draft 2020-12 and requires format_version."""
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "format_version" in schema["required"]


def test_validate_json_matches_its_schema(plan_file: Path) -> None:
    """validate --json (valid and invalid plans) has format_version and the validate shape."""
    bad = plan_file.with_name("bad.yaml")
    bad.write_text("version: 1\nname: x\nroots: {r: {}}\nmounts:\n  - {name: a, root: r, target: /abs, type: tmpfs}\n")
    result = run("validate", "--json", str(plan_file), str(bad))
    assert result.returncode == 2
    doc = document(result, "validate")
    assert [r["valid"] for r in doc["results"]] == [True, False]


def test_steps_json_matches_its_schema() -> None:
    """steps --json, apply and destroy transcripts."""
    for extra in ([], ["--destroy"]):
        result = run("steps", "plans/demo.yaml", "--json", *extra)
        assert result.returncode == 0, result.stderr
        assert document(result, "steps")["destroy"] is bool(extra)


def test_plan_and_diff_json_match_the_changes_schema(tmp_path: Path, plan_file: Path) -> None:
    """plan --json (with --steps) and diff --json share the change-set shape; touches nothing."""
    result = run("plan", str(plan_file), *common(tmp_path), "--steps")
    assert result.returncode == 0, result.stderr
    doc = document(result, "changes")
    assert doc["summary"]["add"] == 2 and doc["steps"]
    result = run("diff", str(plan_file), *common(tmp_path))
    assert result.returncode == 0, result.stderr  # nothing applied: nothing managed can drift
    document(result, "changes")


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (["plan", "plans/demo.yaml", "--json", "--no-such-option"], 2, "UsageError"),
        (["plan", "missing.yaml", "--json"], 2, "PlanError"),
        (["plan", "plans/demo.yaml", "--json", "--root", "sandbox=/nonexistent/mountplan"], 3, "RootError"),
        (["graph", "plans/demo.yaml", "--format", "mermaid", "--steps", "--json"], 2, "UsageError"),
    ],
    ids=["usage", "plan", "root", "meaningless-combination"],
)
def test_an_error_under_json_is_a_json_document_on_stdout(args: list[str], code: int, error: str) -> None:
    """A failure under --json prints {error, code, message} on stdout (code = exit code) and nothing on stderr."""
    result = run(*args)
    assert result.returncode == code
    doc = document(result, "error")
    assert doc["code"] == code and doc["error"] == error and doc["message"]
    assert "error" not in result.stderr.lower() or "level" in result.stderr  # no second copy as text


def test_a_plan_error_under_json_lists_every_diagnostic(tmp_path: Path) -> None:
    """PlanError's JSON carries the diagnostics with line and column."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nroots: {r: {}}\nmounts:\n  - {name: a, root: r, target: /abs, type: tmpfs}\n")
    doc = document(run("plan", str(bad), "--json"), "error")
    assert doc["diagnostics"][0]["line"] == 5


@pytest.mark.mountns
def test_apply_status_destroy_json_match_their_schemas(tmp_path: Path, plan_file: Path) -> None:
    """apply, status and destroy --json: documented shapes naming the mounts."""
    result = run("apply", str(plan_file), *common(tmp_path))
    assert result.returncode == 0, result.stderr
    assert document(result, "apply")["created"] == ["a", "b"]
    result = run("status", str(plan_file), *common(tmp_path))
    assert [m["name"] for m in document(result, "status")["mounts"]] == ["a", "b"]
    result = run("destroy", str(plan_file), *common(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(document(result, "destroy")["removed"]) == ["a", "b"]
    result = run("recover", "--state-dir", str(tmp_path / "state"), "--json")
    assert result.returncode == 0, result.stderr
    assert document(result, "recover") == {"format_version": 1, "undone": [], "leftovers": []}


@pytest.mark.mountns
def test_run_json_reports_status_and_what_was_applied_and_destroyed(tmp_path: Path, plan_file: Path) -> None:
    """run --json prints, after the command's own output, its exit status and the mounts made and removed."""
    result = run("run", str(plan_file), *common(tmp_path), "--", "sh", "-c", "exit 3")
    assert result.returncode == 3, result.stderr
    doc = document(result, "run")
    assert doc["status"] == 3 and doc["command"] == ["sh", "-c", "exit 3"]
    assert doc["applied"] == {"created": ["a", "b"], "updated": []}
    assert sorted(doc["destroyed"]["removed"]) == ["a", "b"]


def test_a_plan_on_stdin_is_read_with_dash(plan_file: Path) -> None:
    """`-` reads the plan from standard input (validate, steps)."""
    result = run("validate", "--json", "-", stdin=TMPFS_PLAN)
    assert document(result, "validate")["results"][0] == {"file": "<stdin>", "valid": True, "diagnostics": []}
    result = run("steps", "-", "--json", stdin=TMPFS_PLAN)
    assert document(result, "steps")["plan"] == "jsonshape"
    assert run("validate", "-", "-", stdin=TMPFS_PLAN).returncode == 2
