"""The ``mountplan`` command line: parse arguments, call the API, render, map exit codes.

All text output goes through :mod:`mountplan.cli._output`, which escapes control
characters (names chosen by a root's contents or a sandboxed process reach it).

Exit codes (stable, documented in docs/cli.md):

  0  success (``plan --detailed-exitcode``: no changes)
  1  unexpected internal error
  2  invalid plan, plan file or saved plan, or command-line usage
  3  a root is missing or unusable
  4  a step failed (kernel error); rollback result is in the message; ``plan``: the
     kernel refuses a mount apply would make (asked without changing anything)
  5  the kernel lacks a required syscall
  6  the state lock is held by another mountplan
  7  the state directory or a file in it is unusable
  8  a saved plan is stale (the live table changed)
  10 ``plan --detailed-exitcode``: changes are pending
"""


from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from mountplan.errors import MountplanError, PlanError

from . import logs
from ._checks import UsageError
from ._common import EXIT_INTERNAL, EXIT_USAGE
from ._output import ParserUsageError, err, error_document, out_json
from ._parser import COMMANDS as _COMMANDS
from ._parser import build_parser
from ._program import exit_fast

__all__ = ["UsageError", "build_parser", "console", "main"]


class InternalError(Exception):
    """A bug in mountplan (exit 1): reported in one line, with the traceback under -vv."""


def _subcommand_index(argv: Sequence[str]) -> int | None:
    """Where the command is in ``argv``: the first word that is not a global option or its value."""
    skip = False
    for index, word in enumerate(argv):
        if skip:
            skip = False
        elif word == "--log-format":
            skip = True
        elif not word.startswith("-"):
            return index
        elif word == "--":
            return None
    return None


def _wants_json(argv: Sequence[str]) -> bool:
    # Decided before parsing, so that a usage error under --json is JSON too.
    return "--json" in argv


def _fail(exc: BaseException, code: int, *, json_mode: bool, text: str) -> int:
    """Report a failure once: a JSON document on stdout under --json, else ``text`` on stderr."""
    if json_mode:
        out_json(error_document(exc, code))
    else:
        err(text)
    return code


def _with_hint(exc: ParserUsageError, argv: Sequence[str], at: int | None, *, had_command: bool) -> ParserUsageError:
    """Say where the words argparse did not take belong: the usual slips are a
    command for ``run`` given without ``--``, and ``--json`` on a command that has none."""
    if "unrecognized arguments" not in str(exc) or at is None:
        return exc
    hint = ""
    if argv[at] == "run" and not had_command:
        hint = "the command to run goes after --, e.g. mountplan run PLAN -- make test"
    elif "--json" in argv[:at]:
        hint = f"--json goes after the command: mountplan {argv[at]} ... --json"
    elif "--json" in argv[at + 1 :]:
        hint = f"`mountplan {argv[at]}` has no --json (see mountplan {argv[at]} --help)"
    if not hint:
        return exc
    return ParserUsageError(f"{exc}: {hint}", exc.usage)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run` takes its command after `--`; split it off before argparse sees it,
    # so options after PLAN still belong to mountplan.
    command: list[str] = []
    at = _subcommand_index(argv)
    # The top-level --help (before the command) lists every command: build them all then.
    only = argv[at] if at is not None and not {"-h", "--help"} & set(argv[:at]) else None
    parser = build_parser(only=only if only in _COMMANDS else None)
    if at is not None and argv[at] == "run" and "--" in argv[at:]:
        cut = argv.index("--", at)
        argv, command = argv[:cut], argv[cut + 1 :]
    json_mode = _wants_json(argv)
    try:
        args = parser.parse_args(argv)
    except ParserUsageError as exc:
        exc = _with_hint(exc, argv, at, had_command=bool(command))
        return _fail(exc, EXIT_USAGE, json_mode=json_mode, text=f"{exc.usage}mountplan: error: {exc}\n")
    json_mode = bool(getattr(args, "json", False))
    if args.subcommand == "run":
        args.argv = command
    verbosity = args.verbose + args.sub_verbose
    if args.quiet and verbosity:
        return _fail(UsageError("-q and -v contradict each other; give one"), EXIT_USAGE, json_mode=json_mode,
                     text="mountplan: error: -q and -v contradict each other; give one\n")
    verbosity = -1 if args.quiet else verbosity
    args.collector = logs.EventCollector() if args.subcommand == "run" and json_mode else None
    logs.configure(verbosity, args.log_format, collector=args.collector)
    try:
        code: int = args.func(args)
        return code
    except PlanError as exc:
        return _fail(exc, exc.exit_code, json_mode=json_mode, text="".join(f"{diag}\n" for diag in exc.diagnostics))
    except MountplanError as exc:
        return _fail(exc, exc.exit_code, json_mode=json_mode, text=f"mountplan: error: {exc}\n")
    except KeyboardInterrupt as exc:
        return _fail(exc, 130, json_mode=json_mode, text="mountplan: interrupted\n")
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_INTERNAL
    except Exception as exc:  # a bug: one line by default, the traceback with -vv
        if verbosity >= 2:
            raise
        message = f"internal error: {type(exc).__name__}: {exc} (rerun with -vv for a traceback)"
        return _fail(InternalError(message), EXIT_INTERNAL, json_mode=json_mode, text=f"mountplan: {message}\n")


def console() -> NoReturn:
    """The ``mountplan`` program (console script, ``python -m mountplan``): :func:`main`, then exit fast."""
    exit_fast(main())


if __name__ == "__main__":  # pragma: no cover
    console()
