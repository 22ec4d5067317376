"""``mountplan completion SHELL`` and ``mountplan manpage``: generated from the parser by maintained tools.

Completion scripts come from `shtab <https://github.com/iterative/shtab>`_ and the
manual page from `argparse-manpage <https://github.com/praiskup/argparse-manpage>`_,
both optional (``pip install 'mountplan[docs]'``); without them the command says
what to install and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from ._checks import UsageError

__all__ = ["SHELLS", "add_completion_parsers"]

SHELLS = ("bash", "zsh", "fish")


def _optional(module: str, package: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{what} needs the {package!r} package, which is not installed: "
            f"pip install 'mountplan[docs]' (or pip install {package})"
        ) from None


def add_completion_parsers(
    sub: Any, parents: Sequence[argparse.ArgumentParser], build_parser: Callable[[], argparse.ArgumentParser]
) -> None:
    """Register ``completion`` and ``manpage``; each builds a fresh parser to describe."""
    p = sub.add_parser("completion", parents=list(parents), help="print a shell completion script (bash, zsh, fish)")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(func=lambda args: _completion(args, build_parser))

    p = sub.add_parser("manpage", parents=list(parents), help="print the mountplan(1) manual page (roff)")
    p.set_defaults(func=lambda args: _manpage(build_parser))


def _completion(args: argparse.Namespace, build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    shtab = _optional("shtab", "shtab", "mountplan completion")
    parser = build_parser()
    _mark_files(parser, shtab)
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _mark_files(parser: argparse.ArgumentParser, shtab: ModuleType) -> None:
    """Plan, saved-plan and output arguments complete file names; directories complete directories."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action.choices.values():
                _mark_files(choice, shtab)
        elif action.dest in {"plan", "plans", "out"}:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.dest in {"state_dir", "cwd", "install"}:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]


def _manpage(build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    manpage = _optional("argparse_manpage.manpage", "argparse-manpage", "mountplan manpage")
    from mountplan import __version__

    parser = build_parser()
    data = {
        "project_name": "mountplan",
        "version": __version__,
        "description": "declarative mount plans for Linux",
        "url": "https://github.com/mountplan/mountplan",
        "author": "The mountplan authors",
    }
    try:
        page = manpage.Manpage(parser, _data=data)
    except TypeError:  # an argparse-manpage without the _data argument
        page = manpage.Manpage(parser)
    sys.stdout.write(str(page))
    return 0
