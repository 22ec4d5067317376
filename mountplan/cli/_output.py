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
import sys
from typing import TYPE_CHECKING, Any

from mountplan._text import printable_lines

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["ArgumentParser", "err", "out", "out_json"]


def out(text: str) -> None:
    """Write command output to stdout."""
    sys.stdout.write(printable_lines(text))


def err(text: str) -> None:
    """Write a message to stderr."""
    sys.stderr.write(printable_lines(text))


def out_json(data: Any) -> None:
    """Write one JSON document (stable key order) to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors escaped too (it echoes unrecognized arguments raw)."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        super()._print_message(printable_lines(message) if message else message, file)
