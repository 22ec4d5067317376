"""NUL and control characters in a plan, and plan files that are not regular files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from mountplan import loader
from mountplan.errors import PlanError
from mountplan.loader import Severity

HEAD = "version: 1\nname: p\nroots: {r: {}}\nmounts:\n"

#: (mount line, the offending string as written) — each string reaches the kernel.
CASES = {
    "option-value": ('  - {name: a, target: a, type: tmpfs, options: {size: "1M\\0,uid=0"}}', '"1M\\0,uid=0"'),
    "option-name": ('  - {name: a, target: a, type: tmpfs, options: {"size\\0": 1M}}', '"size\\0"'),
    "source": ('  - {name: a, target: a, type: tmpfs, source: "s\\0x"}', '"s\\0x"'),
    "bind-path": ('  - {name: a, target: a, bind: {path: "/usr\\0/../../etc"}}', '"/usr\\0/../../etc"'),
    "bind-root-path": ('  - {name: a, target: a, bind: {root: r, path: "sub\\0x"}}', '"sub\\0x"'),
    "target": ('  - {name: a, target: "a\\0b", type: tmpfs}', '"a\\0b"'),
    "lowerdir": ('  - {name: a, target: a, type: overlay, options: {lowerdir: "/l\\0:m", upperdir: u, workdir: w}}', '"/l\\0:m"'),
    "lowerdir+": ('  - {name: a, target: a, type: overlay, options: {"lowerdir+": [/l, "m\\0"], upperdir: u, workdir: w}}', '"m\\0"'),
    "escape-in-target": ('  - {name: a, target: "a\\e[2J", type: tmpfs}', '"a\\e[2J"'),
    "c1-in-bind-path": ('  - {name: a, target: a, bind: {path: "/usr\\x9b1m"}}', '"/usr\\x9b1m"'),
    "newline-in-source": ('  - {name: a, target: a, type: tmpfs, source: "s\\nforged"}', '"s\\nforged"'),
}


@pytest.mark.parametrize(("line", "string"), CASES.values(), ids=CASES.keys())
def test_a_control_character_is_one_located_error(line: str, string: str, fixed_kernel: frozenset[str]) -> None:
    """The string is refused at its own line and column; load() raises and builds nothing."""
    col = line.index(string) + 1
    plan, diagnostics = loader.check(HEAD + line + "\n", filename="p.yaml")
    assert plan is None
    errors = [d for d in diagnostics if d.severity is Severity.ERROR]
    assert [(d.line, d.col) for d in errors] == [(5, col)]
    with pytest.raises(PlanError):
        loader.load_text(HEAD + line + "\n", strict_kernel=False)


def test_a_nul_in_a_root_path_is_refused(fixed_kernel: frozenset[str]) -> None:
    """A root's own path is a path too."""
    text = 'version: 1\nname: p\nroots: {r: {path: "/srv\\0/etc"}}\nmounts:\n  - {name: a, target: a, type: tmpfs}\n'
    _, diagnostics = loader.check(text, filename="p.yaml")
    assert [(d.line, d.col) for d in diagnostics if d.is_error] == [(3, text.splitlines()[2].index('"') + 1)]


def test_printable_non_ascii_is_still_accepted(fixed_kernel: frozenset[str]) -> None:
    """Only control characters are refused: accented names and emoji in paths stay valid."""
    text = HEAD + '  - {name: a, target: "données/ü", type: tmpfs, source: "café 🚀", options: {size: "1M"}}\n'
    plan, diagnostics = loader.check(text, filename="p.yaml")
    assert plan is not None and diagnostics == []


KERNEL_BOUND = [
    ("target", {"name": "a", "target": "a\x00b", "type": "tmpfs"}),
    ("source", {"name": "a", "target": "a", "type": "tmpfs", "source": "s\x1b"}),
    ("option-value", {"name": "a", "target": "a", "type": "tmpfs", "options": {"size": "1M\x00,uid=0"}}),
    ("option-item", {"name": "a", "target": "a", "type": "overlay", "options": {"lowerdir+": ["x\x00"]}}),
    ("option-name", {"name": "a", "target": "a", "type": "tmpfs", "options": {"size\x00": "1M"}}),
    ("option-name-newline", {"name": "a", "target": "a", "type": "tmpfs", "options": {"size\n": "1M"}}),
    ("bind-path", {"name": "a", "target": "a", "bind": {"path": "/usr\x00/../etc"}}),
]


@pytest.mark.parametrize("mount", [m for _, m in KERNEL_BOUND], ids=[i for i, _ in KERNEL_BOUND])
def test_the_schema_itself_refuses_control_characters(mount: dict[str, object]) -> None:
    """Editors and check-jsonschema, which see only the schema, refuse them too."""
    doc = {"version": 1, "name": "p", "roots": {"r": {}}, "mounts": [mount]}
    assert not Draft202012Validator(loader.schema()).is_valid(doc)
    doc["mounts"] = [{k: v for k, v in mount.items() if k not in ("options",)} | {"target": "a"}]
    if "source" in mount:
        doc["mounts"][0]["source"] = "s"  # type: ignore[index]
    if "bind" in mount:
        doc["mounts"][0]["bind"] = {"path": "/usr"}  # type: ignore[index]
    assert Draft202012Validator(loader.schema()).is_valid(doc)


def test_the_schema_refuses_control_characters_in_a_root_path() -> None:
    """roots.NAME.path: absolute and without control characters."""
    doc = {"version": 1, "name": "p", "roots": {"r": {"path": "/srv\n"}}, "mounts": [{"name": "a", "target": "a", "type": "tmpfs"}]}
    assert not Draft202012Validator(loader.schema()).is_valid(doc)


def test_a_fifo_is_a_diagnostic_without_waiting(tmp_path: Path) -> None:
    """check_file on a FIFO nobody writes to returns at once (in a child, so a hang cannot hang the suite)."""
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    code = (
        "import sys\nfrom mountplan import loader\n"
        "plan, d = loader.check_file(sys.argv[1])\nprint(plan is None, d[0].line, d[0].col, d[0].is_error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == ["True", "1", "1", "True"]


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_a_directory_or_device_is_a_diagnostic(tmp_path: Path, kind: str) -> None:
    """Only a regular file is read as a plan (/dev/zero would otherwise be read up to the size limit)."""
    path = str(tmp_path) if kind == "directory" else "/dev/zero"
    plan, diagnostics = loader.check_file(path)
    assert plan is None
    assert [(d.file, d.line, d.col, d.is_error) for d in diagnostics] == [(path, 1, 1, True)]
