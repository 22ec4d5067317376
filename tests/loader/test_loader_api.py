"""The loader's public interface: check, load, load_text, schema, Diagnostic, and the model it builds."""

from __future__ import annotations

import json
import pathlib

import pytest

from mountplan.errors import PlanError
from mountplan.loader import MAX_MOUNTS, Diagnostic, Severity, check, load, load_text, schema
from mountplan.model import (
    Attr,
    BindSource,
    MountpointKind,
    MountpointSpec,
    Option,
    Propagation,
    RootSpec,
    SourceRef,
)

FULL = """\
version: 1
name: action-root
roots:
  input: {}
  host: {path: /srv/x}
defaults: {root: input, attrs: [nosuid, nodev, relatime], propagation: slave}
mounts:
  - name: proc
    target: proc/
    type: proc
    options: {hidepid: invisible, mode: 0755, ro: true, quiet: false, xino: off}
    attrs: [noexec, strictatime]
  - name: tools
    root: host
    target: opt//tools
    bind: {path: /opt/tools}
    attrs: [ro]
    propagation: private
  - name: dev-null
    target: dev/null
    bind: {root: input, path: ./devices/null, recursive: false}
    attrs: [noexec]
    inherit_attrs: false
  - name: work
    target: work
    type: overlay
    source: ovl
    options: {"lowerdir+": [base, /lower], upperdir: tmp/upper, workdir: tmp/work}
    after: [proc]
    mountpoint: {create: false, kind: directory, mode: "1777"}
"""


def test_full_plan_builds_model_with_defaults_applied(fixed_kernel: frozenset[str]) -> None:
    """Every field maps onto the model, with root, attrs and propagation defaults applied."""
    plan = load_text(FULL, filename="full.yaml")
    assert plan.name == "action-root" and plan.version == 1 and plan.source_file == "full.yaml"
    assert plan.roots == (RootSpec("input"), RootSpec("host", "/srv/x"))
    proc, tools, null, work = plan.mounts
    assert proc.root == "input" and proc.target == "proc" and proc.fs_type == "proc"
    assert proc.options == (
        Option("hidepid", "invisible"),
        Option("mode", "0755"),
        Option("ro"),
        Option("xino", "off"),
    )
    assert proc.attrs == frozenset({Attr.NOSUID, Attr.NODEV, Attr.NOEXEC, Attr.STRICTATIME})
    assert proc.propagation is Propagation.SLAVE
    assert proc.mountpoint == MountpointSpec()
    assert tools.root == "host" and tools.target == "opt/tools"
    assert tools.bind == BindSource(SourceRef("/opt/tools"), recursive=True)
    assert tools.attrs == frozenset({Attr.NOSUID, Attr.NODEV, Attr.RELATIME, Attr.RO})
    assert tools.propagation is Propagation.PRIVATE
    assert null.bind == BindSource(SourceRef("devices/null", "input"), recursive=False)
    assert null.attrs == frozenset({Attr.NOEXEC})
    assert work.source == "ovl" and work.after == ("proc",)
    assert work.options[:2] == (Option("lowerdir+", "base"), Option("lowerdir+", "/lower"))
    assert work.mountpoint == MountpointSpec(create=False, kind=MountpointKind.DIRECTORY, mode=0o1777)
    assert work.source_refs() == (
        SourceRef("base", "input"),
        SourceRef("/lower"),
        SourceRef("tmp/upper", "input"),
        SourceRef("tmp/work", "input"),
    )


def test_single_root_is_the_default_root() -> None:
    """With exactly one root and no defaults.root, mounts belong to that root."""
    plan = load_text("version: 1\nname: p\nroots: {only: {}}\nmounts: [{name: t, target: t, type: tmpfs}]\n")
    assert plan.mounts[0].root == "only"
    assert plan.mounts[0].attrs == frozenset()
    assert plan.mounts[0].propagation is Propagation.PRIVATE


def test_numbers_in_options_are_passed_as_written() -> None:
    """An unquoted number keeps its source text (01777 stays octal, 0x10 stays hex)."""
    plan = load_text(
        "version: 1\nname: p\nroots: {r: {}}\n"
        "mounts: [{name: t, target: t, type: tmpfs, options: {mode: 01777, nr_inodes: 0x10, x: [1.50]}}]\n"
    )
    assert plan.mounts[0].options == (
        Option("mode", "01777"),
        Option("nr_inodes", "0x10"),
        Option("x", "1.50"),
    )


def test_empty_mount_list_is_a_valid_plan() -> None:
    """A plan may have no mounts (destroying everything it made)."""
    assert load_text("version: 1\nname: p\nroots: {r: {}}\nmounts: []\n").mounts == ()


def test_check_returns_plan_none_iff_error() -> None:
    """check() returns no Plan exactly when some diagnostic is an error."""
    plan, diagnostics = check("version: 1\n", filename="x.yaml")
    assert plan is None and all(d.severity is Severity.ERROR for d in diagnostics)


def test_unknown_fs_type_is_warning_by_default_and_error_when_strict(fixed_kernel: frozenset[str]) -> None:
    """strict_kernel turns the unknown-filesystem warning into an error."""
    text = "version: 1\nname: p\nroots: {r: {}}\nmounts: [{name: t, target: t, type: zfs}]\n"
    plan, diagnostics = check(text, filename="p.yaml")
    assert plan is not None and [d.severity for d in diagnostics] == [Severity.WARNING]
    plan, diagnostics = check(text, filename="p.yaml", strict_kernel=True)
    assert plan is None and [d.severity for d in diagnostics] == [Severity.ERROR]
    with pytest.raises(PlanError):
        load_text(text)


def test_fs_subtype_is_checked_by_its_base_type(fixed_kernel: frozenset[str]) -> None:
    """'fuse.sshfs' is known when the kernel knows 'fuse'."""
    text = "version: 1\nname: p\nroots: {r: {}}\nmounts: [{name: t, target: t, type: fuse.sshfs}]\n"
    assert check(text, filename="p.yaml", strict_kernel=True)[1] == []


def test_load_raises_plan_error_with_every_diagnostic(tmp_path: pathlib.Path) -> None:
    """load() raises PlanError carrying all errors, sorted by position."""
    path = tmp_path / "bad.yaml"
    path.write_text("version: 2\nname: 'a b'\nroots: {}\nmounts: []\n")
    with pytest.raises(PlanError) as info:
        load(path)
    lines = [str(d) for d in info.value.diagnostics]
    assert lines == [
        f"{path}:1:10: error: unsupported plan version 2; this mountplan reads version 1",
        (
            f"{path}:2:7: error: invalid plan name 'a b': use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit (at most 64)"
        ),
        f"{path}:3:8: error: a plan needs at least one root",
    ]
    assert str(info.value) == "\n".join(lines)


def test_load_unreadable_file_is_a_diagnostic_at_1_1(tmp_path: pathlib.Path) -> None:
    """A missing file is reported as a PlanError diagnostic at 1:1, not an OSError."""
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PlanError) as info:
        load(missing)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.file, diagnostic.line, diagnostic.col) == (str(missing), 1, 1)
    assert "No such file or directory" in diagnostic.message


def test_load_reads_a_valid_file(tmp_path: pathlib.Path) -> None:
    """load() accepts a path-like and records it as the plan's source file."""
    path = tmp_path / "ok.yaml"
    path.write_text("version: 1\nname: p\nroots: {r: {}}\nmounts: []\n")
    assert load(path, strict_kernel=False).source_file == str(path)


def test_diagnostic_renders_like_a_compiler() -> None:
    """str(Diagnostic) is FILE:LINE:COL: severity: message; to_json keeps a stable key order."""
    diagnostic = Diagnostic("p.yaml", 3, 7, Severity.WARNING, "hmm")
    assert str(diagnostic) == "p.yaml:3:7: warning: hmm"
    assert json.dumps(diagnostic.to_json()) == (
        '{"file": "p.yaml", "line": 3, "col": 7, "severity": "warning", "message": "hmm"}'
    )


def test_schema_returns_a_fresh_copy() -> None:
    """schema() is the packaged schema, and callers cannot corrupt it for later calls."""
    first = schema()
    first["title"] = "changed"
    assert schema()["title"] == "mountplan plan"


def test_mount_limit_accepts_max_and_rejects_one_more() -> None:
    """MAX_MOUNTS mounts load; one more is a single located error."""
    head = "version: 1\nname: big\nroots: {r: {}}\nmounts:\n"
    row = "  - {{name: m{0}, target: d{0}, type: tmpfs}}\n"
    plan = load_text(head + "".join(row.format(i) for i in range(MAX_MOUNTS)), strict_kernel=False)
    assert len(plan.mounts) == MAX_MOUNTS
    plan, diagnostics = check(head + "".join(row.format(i) for i in range(MAX_MOUNTS + 1)), filename="b")
    assert plan is None
    assert [str(d) for d in diagnostics] == [
        f"b:4:1: error: plan has {MAX_MOUNTS + 1} mounts; the limit is 10000"
    ]


def test_diagnostics_are_sorted_by_line_then_column() -> None:
    """Diagnostics from all stages come out ordered by position."""
    text = (
        "version: 1\nname: p\nroots: {r: {}}\nmounts:\n  - {name: a, target: /a, type: tmpfs, atrs: []}\n"
        "  - {name: a, target: b, type: tmpfs, attrs: [nosiud]}\n"
    )
    _, diagnostics = check(text, filename="p")
    positions = [(d.line, d.col) for d in diagnostics]
    assert positions == sorted(positions) and len(positions) == 4
