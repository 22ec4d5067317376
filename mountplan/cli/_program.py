"""How the ``mountplan`` program starts and ends: one sub-parser per command line, and a quick exit."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, NoReturn

from ._output import ArgumentParser

__all__ = ["OnlyOne", "exit_fast"]


class OnlyOne:
    """The subparsers action, building only the command named ``only`` (every other one on a scratch parser).

    ``main`` knows the command before parsing: the full parser, thirteen
    commands with their options, costs more than the kernel work of a `run`.
    """

    def __init__(self, action: Any, only: str | None) -> None:
        self._action = action
        self._only = only

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._only is None or name == self._only:
            return self._action.add_parser(name, **kwargs)
        return ArgumentParser(add_help=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._action, name)


def exit_fast(code: int) -> NoReturn:
    """End the program with ``code`` without tearing the interpreter down.

    Once main() has returned, freeing every module and object one by one costs
    a `run` more CPU than its mounts. With no other thread left, the atexit
    handlers run, the streams are flushed, and the process ends with os._exit;
    anything unusual takes the ordinary exit.
    """
    if threading.active_count() == 1:
        atexit._run_exitfuncs()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(code)  # the ordinary exit reports a broken stream as it always has
        os._exit(code)
    sys.exit(code)
