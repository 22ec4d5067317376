"""The library's loggers: each event reaches stdlib logging as data (a dict), never as pre-rendered text.

Every event is handed to the stdlib logger ``mountplan`` as a record whose
``msg`` is a :class:`LogEvent`: a ``dict`` holding ``"event"`` (the event name,
e.g. ``"mount.created"``) and the event's fields. A JSON or OpenTelemetry handler
in the embedding program therefore gets the fields as they are; a plain
``%(message)s`` formatter shows ``mount.created mnt_id=42 target='r:a'``.

The processors are given to each logger here, so the library neither reads nor
changes the program's global structlog configuration; only the CLI configures
logging (:mod:`mountplan.cli.logs`).

structlog is imported on the first event that passes the stdlib logger's level:
importing it (with asyncio, ssl, inspect behind it) costs more than a whole
``mountplan run`` of a small plan spends in the kernel, and at the default level
most runs log nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import structlog.stdlib

__all__ = [
    "EventLogger",
    "LogEvent",
    "import_structlog_with",
    "load_structlog",
    "processors",
    "structured_logger",
    "to_record",
    "when_structlog_loaded",
]


class LogEvent(dict[str, Any]):
    """A log record's ``msg``: ``{"event": NAME, **fields}``; ``str()`` is one line, ``NAME key=value ...``."""

    __slots__ = ()

    def __str__(self) -> str:
        fields = " ".join(f"{key}={value!r}" for key, value in sorted(self.items()) if key != "event")
        name = str(self.get("event", ""))
        return f"{name} {fields}" if fields else name


def to_record(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[LogEvent], dict[str, Any]]:
    """structlog's last processor: the stdlib call's arguments, with the event as the record's ``msg``.

    ``exc_info`` and ``stack_info`` stay arguments of the stdlib call, so the
    record carries them the stdlib way.
    """
    kwargs = {key: event_dict.pop(key) for key in ("exc_info", "stack_info") if key in event_dict}
    return (LogEvent(event_dict),), kwargs


_on_load: list[Callable[[], None]] = []
_importers: list[Callable[[], None]] = []


def import_structlog_with(importer: Callable[[], None]) -> None:
    """Have ``importer`` make the first import of structlog (the CLI hides rich from it)."""
    _importers[:] = [importer]


def when_structlog_loaded(func: Callable[[], None]) -> None:
    """Call ``func`` once structlog is imported: now if it already is, else when an event first needs it."""
    if "structlog" in sys.modules:
        func()
    else:
        _on_load.append(func)


def load_structlog() -> Any:
    """The structlog module, imported (by the registered importer) and set up on first use."""
    if _importers and "structlog" not in sys.modules:
        _importers[0]()
    import structlog.stdlib

    while True:
        try:  # list.pop is atomic: two threads logging their first event each run a hook once
            hook = _on_load.pop(0)
        except IndexError:
            return structlog
        hook()


def processors() -> list[Any]:
    """Level filter first (an event below the logger's level costs no formatting), then the record."""
    return [load_structlog().stdlib.filter_by_level, to_record]


class EventLogger:
    """The face of a structlog ``BoundLogger`` (``bind``, ``debug`` ... ``exception``) that imports structlog lazily.

    An event below the stdlib logger's level returns at once; the first one that
    passes imports structlog and goes through a real ``BoundLogger`` with
    :func:`processors`, exactly as an eagerly made one would.
    """

    __slots__ = ("_bound", "_context", "_logger")

    def __init__(self, logger: logging.Logger, context: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._context = context or {}
        self._bound: structlog.stdlib.BoundLogger | None = None

    def bind(self, **fields: Any) -> EventLogger:
        """A logger that adds ``fields`` to every event."""
        return EventLogger(self._logger, {**self._context, **fields})

    def is_enabled_for(self, level: int) -> bool:
        """Whether an event at ``level`` would reach a handler (cheap: no structlog)."""
        return self._logger.isEnabledFor(level)

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at DEBUG."""
        if self._logger.isEnabledFor(logging.DEBUG):
            self._structlog_logger().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at INFO."""
        if self._logger.isEnabledFor(logging.INFO):
            self._structlog_logger().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at WARNING."""
        if self._logger.isEnabledFor(logging.WARNING):
            self._structlog_logger().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR."""
        if self._logger.isEnabledFor(logging.ERROR):
            self._structlog_logger().error(event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR with the exception being handled."""
        if self._logger.isEnabledFor(logging.ERROR):
            self._structlog_logger().exception(event, **fields)

    def _structlog_logger(self) -> structlog.stdlib.BoundLogger:
        if self._bound is None:
            structlog = load_structlog()
            bound = structlog.wrap_logger(
                self._logger, processors=processors(), wrapper_class=structlog.stdlib.BoundLogger
            )
            self._bound = bound.bind(**self._context) if self._context else bound
        assert self._bound is not None
        return self._bound


def structured_logger(logger: logging.Logger) -> EventLogger:
    """A structlog-style logger that hands ``logger`` each event as a :class:`LogEvent`."""
    return EventLogger(logger)
