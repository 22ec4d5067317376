"""`mountplan plan - -o FILE`: a plan read from standard input cannot be saved, and says so (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PLAN = "version: 1\nname: from-stdin\nroots: {r: {}}\nmounts:\n  - {name: a, root: r, target: a, type: tmpfs}\n"


def test_saving_a_plan_read_from_stdin_is_a_usage_error(tmp_path: Path) -> None:
    """A saved plan embeds its plan file's text; `-` has none, so plan -o refuses before planning (it used to exit 1)."""
    (tmp_path / "root").mkdir()
    saved = tmp_path / "saved.json"
    result = subprocess.run(
        [sys.executable, "-m", "mountplan", "plan", "-", "--root", f"r={tmp_path / 'root'}", "-o", str(saved)],
        input=PLAN,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "plan -o" in result.stderr and "standard input" in result.stderr, result.stderr
    assert "internal error" not in result.stderr
    assert result.stdout == ""  # refused before anything was planned or printed
    assert not saved.exists()
