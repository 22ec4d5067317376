"""The CLI's only way to write text: every line escaped for the terminal.

Targets, sources, file names, process names and the kernel's messages can hold
control characters chosen by whoever controls a plan, a root or a sandboxed
process. Every text write goes through :func:`out` or :func:`err`, which escape
them (:func:`mountplan._text.printable_lines`); newlines stay, as the output's
own structure. JSON documents are written with :func:`out_json`: ``json.dumps``
already escapes every control character, and the document must stay exact.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from mountplan._text import printable_lines
from mountplan.errors import MountplanError, PlanError

from ._checks import UsageError

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["FORMAT_VERSION", "ArgumentParser", "ParserUsageError", "err", "error_document", "out", "out_json"]

#: ``format_version`` of every ``--json`` document (shapes: mountplan/schema/output/*.schema.json).
FORMAT_VERSION = 1


def out(text: str) -> None:
    """Write command output to stdout."""
    sys.stdout.write(printable_lines(text))


def err(text: str) -> None:
    """Write a message to stderr."""
    sys.stderr.write(printable_lines(text))


def out_json(data: Any) -> None:
    """Write one JSON document (stable key order) to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def error_document(exc: BaseException, code: int) -> dict[str, Any]:
    """The ``--json`` document of a failure: ``error`` (the exception's class), ``code`` (exit code), ``message``.

    A plan error adds its ``diagnostics``; a failed step adds ``step`` and ``leftovers``.
    """
    kind = "UsageError" if isinstance(exc, UsageError) else type(exc).__name__
    doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "error": kind, "code": code}
    if isinstance(exc, PlanError):
        doc["message"] = f"{len(exc.diagnostics)} error(s) in the plan"
        doc["diagnostics"] = [d.to_json() for d in exc.diagnostics]
    else:
        doc["message"] = str(exc)
    if isinstance(exc, MountplanError):
        for key in ("step", "leftovers"):
            value = getattr(exc, key, None)
            if value is not None:
                doc[key] = list(value) if isinstance(value, list | tuple) else value
    return doc


class ParserUsageError(UsageError):
    """A command line argparse rejects; ``usage`` is the usage line of the (sub)command."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors escaped too (it echoes unrecognized arguments raw).

    A usage error is raised as :class:`ParserUsageError` instead of printed, so the
    CLI reports it once, as text or (under ``--json``) as a JSON document.
    """

    def error(self, message: str) -> NoReturn:
        raise ParserUsageError(message, self.format_usage())

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        super()._print_message(printable_lines(message) if message else message, file)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse builds a formatter for every add_argument (to check its
        # metavar), and each asks shutil for the terminal width: importing
        # shutil (and bz2, lzma) cost every `run` more than its parser. Same
        # width, same rule (shutil.get_terminal_size's columns), os alone.
        return self.formatter_class(prog=self.prog, width=terminal_columns() - 2)  # type: ignore[call-arg]


def terminal_columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size().columns`` gives it: $COLUMNS, else stdout's, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80
