"""Logging set-up for the CLI (the only place mountplan configures logging).

Events always go to stderr: console rendering on a terminal, JSON lines with
``--log-format json``. stdout is reserved for command output and ``--json``.
The console and logfmt renderers write values as they are, so every string value
is escaped first (:func:`escape_values`): an event's target, source or kernel
message must not be able to drive the reader's terminal or forge a log line.
Console colours follow ``NO_COLOR`` and ``FORCE_COLOR`` (:func:`wants_color`).

The library hands each event over as data (:mod:`mountplan._log`); the
:class:`EventFormatter` on the CLI's handler renders it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from mountplan import _log
from mountplan._text import printable, printable_lines

if TYPE_CHECKING:
    from structlog.typing import Processor


def _import_structlog_without_rich() -> None:
    # structlog imports rich, when installed, for pretty tracebacks: ~100 ms of a
    # `mountplan run` that mounts in a few. configure() turns every exception into
    # text (format_exc_info) before any renderer sees it, so rich would never be
    # used; hide it from structlog's first import only (a later `import rich` works).
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        if sys.modules.get("rich", 0) is None:
            del sys.modules["rich"]


__all__ = ["EventCollector", "EventFormatter", "configure", "escape_values", "wants_color"]


def escape_values(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: C-escape non-printable characters in every string value.

    A formatted traceback (``exception``) keeps its newlines; no other value may
    span lines. Non-string values are rendered with ``repr()``, which escapes them.
    """
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = printable_lines(value) if key == "exception" else printable(value)
    return event_dict


def wants_color(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Colour for ``stream``: ``NO_COLOR`` (non-empty) turns it off, ``FORCE_COLOR`` (non-empty) on, else a tty.

    See https://no-color.org and https://force-color.org; ``NO_COLOR`` wins when both are set.
    """
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    return stream.isatty()


class EventFormatter(logging.Formatter):
    """Render a record of the ``mountplan`` logger with structlog's renderers.

    The library's records carry a :class:`~mountplan._log.LogEvent` (the event and
    its fields); any other record becomes ``{"event": record.getMessage()}``.
    ``level`` and ``timestamp`` come from the record itself. ``processors`` may be
    a function that makes them: it is called for the first record, so a process
    that logs nothing never imports structlog.
    """

    def __init__(
        self, processors: Sequence[Processor] | Callable[[], Sequence[Processor]]
    ) -> None:
        super().__init__()
        self._make = processors if callable(processors) else None
        self._processors = [] if callable(processors) else list(processors)

    def format(self, record: logging.LogRecord) -> str:
        if self._make is not None:
            self._processors, self._make = list(self._make()), None
        fields = dict(record.msg) if isinstance(record.msg, Mapping) else {"event": record.getMessage()}
        method = record.levelname.lower()
        import datetime  # only when a record is logged: a quiet run never formats one

        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        event: Any = {
            **fields,
            "level": method,
            "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        }
        if record.exc_info:
            event["exc_info"] = record.exc_info
        for processor in self._processors:
            event = processor(None, method, event)
        return str(event)


class EventCollector(logging.Handler):
    """Keeps the fields of every event the library logs (``run --json`` reports what was applied)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, Mapping):
            self.events.append(dict(record.msg))


def _renderers(log_format: str, color: bool) -> list[Processor]:
    """The processors after the record's own fields: exceptions to text, escaping, the renderer."""
    sl = _log.load_structlog()

    renderer: Processor
    # A traceback is turned into text first, so that its lines are escaped too.
    escape: list[Processor] = [sl.processors.format_exc_info, escape_values]
    if log_format == "json":
        # json.dumps escapes control characters itself; the values stay exact.
        escape = [sl.processors.format_exc_info]
        renderer = sl.processors.JSONRenderer(sort_keys=True)
    elif log_format == "console":
        renderer = sl.dev.ConsoleRenderer(colors=color)
    else:
        renderer = sl.processors.LogfmtRenderer(sort_keys=True, key_order=["event"])
    return [*escape, renderer]


def _configure_structlog() -> None:
    # Loggers that follow the global configuration (structlog.get_logger(),
    # structlog.wrap_logger() without processors) make the same records as the library's.
    import structlog

    structlog.configure(
        processors=_log.processors(), wrapper_class=structlog.stdlib.BoundLogger, cache_logger_on_first_use=False
    )


def configure(verbosity: int, log_format: str, *, collector: logging.Handler | None = None) -> None:
    """``verbosity``: -1 quiet (errors), 0 warnings, 1 info, 2+ debug.

    ``collector``, if given, also receives every info-or-above event whatever the verbosity.
    structlog itself is imported (and configured) only once an event needs it.
    """
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    color = wants_color(sys.stderr)
    if log_format == "auto":
        # FORCE_COLOR asks for the terminal's rendering where there is no terminal (CI logs).
        log_format = "console" if sys.stderr.isatty() or color else "logfmt"
    _log.import_structlog_with(_import_structlog_without_rich)
    _log.when_structlog_loaded(_configure_structlog)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(lambda: _renderers(log_format, color)))
    handler.setLevel(level)
    logger = logging.getLogger("mountplan")
    logger.handlers[:] = [handler] if collector is None else [handler, collector]
    logger.setLevel(level if collector is None else min(level, logging.INFO))
    logger.propagate = False
