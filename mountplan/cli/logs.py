"""Logging set-up for the CLI (the only place mountplan configures logging).

Events always go to stderr: console rendering on a terminal, JSON lines with
``--log-format json``. stdout is reserved for command output and ``--json``.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(verbosity: int, log_format: str) -> None:
    """``verbosity``: -1 quiet (errors), 0 warnings, 1 info, 2+ debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "logfmt"
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    elif log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.LogfmtRenderer(sort_keys=True, key_order=["event"])
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
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
