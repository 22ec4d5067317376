"""The library's loggers: each event reaches stdlib logging as data (a dict), never as pre-rendered text.

Every event is handed to the stdlib logger ``mountplan`` as a record whose
``msg`` is a :class:`LogEvent`: a ``dict`` holding ``"event"`` (the event name,
e.g. ``"mount.created"``) and the event's fields. A JSON or OpenTelemetry handler
in the embedding program therefore gets the fields as they are; a plain
``%(message)s`` formatter shows ``mount.created mnt_id=42 target='r:a'``.

The processors are given to each logger here, so the library neither reads nor
changes the program's global structlog configuration; only the CLI configures
logging (:mod:`mountplan.cli.logs`).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, cast

import structlog

__all__ = ["PROCESSORS", "LogEvent", "structured_logger", "to_record"]


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


#: Level filter first (an event below the logger's level costs no formatting), then the record.
PROCESSORS: list[Any] = [structlog.stdlib.filter_by_level, to_record]


def structured_logger(logger: logging.Logger) -> structlog.stdlib.BoundLogger:
    """A structlog logger that hands ``logger`` each event as a :class:`LogEvent`."""
    return cast(
        structlog.stdlib.BoundLogger,
        structlog.wrap_logger(logger, processors=PROCESSORS, wrapper_class=structlog.stdlib.BoundLogger),
    )
