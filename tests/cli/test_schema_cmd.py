"""`mountplan schema`: the packaged schema on stdout, or installed where an editor can find it."""

from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
import subprocess
import sys

PACKAGED = importlib.resources.files("mountplan").joinpath("schema/mountplan.schema.json").read_text("utf-8")


def mountplan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mountplan", *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_schema_prints_the_packaged_file_byte_for_byte() -> None:
    """stdout is exactly the schema the loader validates with."""
    result = mountplan("schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == PACKAGED
    assert json.loads(result.stdout)["$id"].startswith("https://")


def test_schema_install_writes_the_file_and_prints_its_path(tmp_path: pathlib.Path) -> None:
    """--install DIR creates DIR, writes mountplan.schema.json readable by all, prints the absolute path."""
    target = tmp_path / "share" / "mountplan"
    result = mountplan("schema", "--install", str(target))
    assert result.returncode == 0, result.stderr
    written = target / "mountplan.schema.json"
    assert result.stdout == f"{written}\n"
    assert written.read_text(encoding="utf-8") == PACKAGED
    assert written.stat().st_mode & 0o777 == 0o644
    assert os.listdir(target) == ["mountplan.schema.json"]


def test_schema_install_replaces_an_older_copy(tmp_path: pathlib.Path) -> None:
    """Installing again after an upgrade replaces the old file."""
    (tmp_path / "mountplan.schema.json").write_text("{}")
    assert mountplan("schema", "--install", str(tmp_path)).returncode == 0
    assert (tmp_path / "mountplan.schema.json").read_text(encoding="utf-8") == PACKAGED


def test_schema_install_into_a_file_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    """A DIR that is a file fails with exit 2 and one line naming it, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = mountplan("schema", "--install", str(blocker))
    assert result.returncode == 2
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr
