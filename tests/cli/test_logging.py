"""Logging for embedders: records carry data, one error is reported once, colours follow the environment."""

from __future__ import annotations

import ast
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from mountplan.cli.logs import EventCollector, wants_color

REPO = Path(__file__).parents[2]
ESC = "\x1b"


@pytest.fixture
def mountplan_records() -> Iterator[EventCollector]:
    """Every record of the ``mountplan`` logger, at every level, while the test runs."""
    logger = logging.getLogger("mountplan")
    collector = EventCollector()
    saved = (logger.level, logger.propagate)
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(saved[0])
        structlog.reset_defaults()


class _Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _warn_cgroup2(monkeypatch: pytest.MonkeyPatch) -> None:
    from mountplan import loader
    from mountplan.engine import executor

    plan = loader.load_text(
        "version: 1\nname: cg\nroots: {r: {}}\nmounts:\n  - {name: cg, root: r, target: cg, type: cgroup2}\n"
    )
    monkeypatch.setattr(executor, "in_initial_cgroup_namespace", lambda: True)
    executor.warn_machine_wide(plan)


def test_a_library_record_carries_the_event_as_a_dict(
    mountplan_records: EventCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stdlib record's msg is the event and its fields, not text rendered by structlog."""
    handler = _Keep()
    logging.getLogger("mountplan").addHandler(handler)
    try:
        _warn_cgroup2(monkeypatch)
    finally:
        logging.getLogger("mountplan").removeHandler(handler)
    (record,) = handler.records
    assert isinstance(record.msg, dict)
    assert record.msg["event"] == "cgroup2.machine_wide" and record.msg["mounts"] == ["cg"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("cgroup2.machine_wide ")  # a plain %(message)s formatter


def test_the_host_programs_structlog_configuration_does_not_change_the_records(
    mountplan_records: EventCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that configures structlog to render text still gets dicts from mountplan."""
    structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
    _warn_cgroup2(monkeypatch)
    assert [e["event"] for e in mountplan_records.events] == ["cgroup2.machine_wide"]


def _log_calls() -> dict[str, set[frozenset[str]]]:
    """Each event name logged by the library, with every set of keyword fields it is logged with."""
    found: dict[str, set[frozenset[str]]] = {}
    for path in sorted((REPO / "mountplan").rglob("*.py")):
        if "cli" in path.relative_to(REPO / "mountplan").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"debug", "info", "warning", "error", "exception", "critical"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and all(k.arg is not None for k in node.keywords)
            ):
                continue
            fields = frozenset(str(k.arg) for k in node.keywords)
            found.setdefault(node.args[0].value, set()).add(fields)
    return found


def test_the_same_event_always_has_the_same_fields() -> None:
    """Every call site of one event name passes the same keyword fields (a handler can rely on them)."""
    calls = _log_calls()
    assert "apply.done" in calls and "destroy.done" in calls
    differing = {event: sorted(sorted(f) for f in fields) for event, fields in calls.items() if len(fields) > 1}
    assert differing == {}


def test_no_library_error_event_duplicates_an_exception() -> None:
    """`apply.failed` is not logged at error level: the raised ExecutionError reports it."""
    source = (REPO / "mountplan" / "engine" / "apply_run.py").read_text()
    assert 'error("apply.failed"' not in source


@pytest.mark.parametrize(
    ("environ", "tty", "expected"),
    [
        ({}, True, True),
        ({}, False, False),
        ({"NO_COLOR": "1"}, True, False),
        ({"NO_COLOR": ""}, True, True),
        ({"FORCE_COLOR": "1"}, False, True),
        ({"FORCE_COLOR": ""}, False, False),
        ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False),
    ],
    ids=["tty", "pipe", "no-color", "empty-no-color", "force-color", "empty-force-color", "no-color-wins"],
)
def test_colour_follows_no_color_and_force_color(environ: dict[str, str], tty: bool, expected: bool) -> None:
    """NO_COLOR (non-empty) turns colour off, FORCE_COLOR (non-empty) on, else it follows the tty."""
    assert wants_color(_Tty(tty), environ) is expected


SNIPPET = (
    "import logging, sys\n"
    "from mountplan.cli import logs\n"
    "from mountplan._log import structured_logger\n"
    "logs.configure(1, 'console')\n"
    "structured_logger(logging.getLogger('mountplan')).warning('mount.created', target='r:a')\n"
)


@pytest.mark.parametrize(("extra", "coloured"), [({"FORCE_COLOR": "1"}, True), ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False)])
def test_console_log_lines_honour_the_colour_variables(extra: dict[str, str], coloured: bool) -> None:
    """Piped console logs get colour codes with FORCE_COLOR and none once NO_COLOR is set."""
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "FORCE_COLOR"}} | extra
    result = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    assert "mount.created" in result.stderr
    assert (ESC in result.stderr) is coloured


@pytest.mark.mountns
def test_a_failed_apply_is_reported_once(tmp_path: Path) -> None:
    """With -vv, the kernel's reason for a failed apply appears once: in the error, not also in a log line."""
    plan = tmp_path / "p.yaml"
    plan.write_text(
        "version: 1\nname: bad\nroots: {r: {}}\nmounts:\n"
        "  - {name: broken, root: r, target: broken, type: tmpfs, options: {size: huge}}\n"
    )
    (tmp_path / "root").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "mountplan", "-v", "apply", str(plan), "--root", f"r={tmp_path / 'root'}",
         "--state-dir", str(tmp_path / "s"), "--log-format", "logfmt"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    assert result.returncode == 4, result.stderr
    assert result.stderr.count("Bad value for 'size'") == 1, result.stderr
    assert "apply.failed" not in result.stderr
