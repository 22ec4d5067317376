"""Logging set-up for the CLI (the only place mountplan configures logging).

Events always go to stderr: console rendering on a terminal, JSON lines with
``--log-format json``. stdout is reserved for command output and ``--json``.
The console and logfmt renderers write values as they are, so every string value
is escaped first (:func:`escape_values`): an event's target, source or kernel
message must not be able to drive the reader's terminal or forge a log line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any


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


_import_structlog_without_rich()

import structlog  # after the call above decided what structlog sees

from mountplan._text import printable, printable_lines

__all__ = ["configure", "escape_values"]


def escape_values(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: C-escape non-printable characters in every string value.

    A formatted traceback (``exception``) keeps its newlines; no other value may
    span lines. Non-string values are rendered with ``repr()``, which escapes them.
    """
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = printable_lines(value) if key == "exception" else printable(value)
    return event_dict


def configure(verbosity: int, log_format: str) -> None:
    """``verbosity``: -1 quiet (errors), 0 warnings, 1 info, 2+ debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "logfmt"
    renderer: structlog.typing.Processor
    # A traceback is turned into text first, so that its lines are escaped too.
    escape: list[structlog.typing.Processor] = [structlog.processors.format_exc_info, escape_values]
    if log_format == "json":
        escape = []  # json.dumps escapes control characters itself; the values stay exact
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    elif log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.LogfmtRenderer(sort_keys=True, key_order=["event"])
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mountplan")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
