"""What every command shares: exit codes, the roots given on the command line, loading a plan, the engine, output."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mountplan.errors import RootError

from ._checks import UsageError
from ._output import FORMAT_VERSION, out, out_json

__all__ = [
    "EXIT_CHANGES",
    "EXIT_INTERNAL",
    "EXIT_KERNEL_REFUSES",
    "EXIT_OK",
    "EXIT_USAGE",
    "STDIN",
    "emit",
    "given_roots",
    "load_plan",
    "make_engine",
    "read_stdin",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CHANGES = 10
#: ``plan``: the kernel refuses a mount apply would make (the same code a failed apply gets).
EXIT_KERNEL_REFUSES = 4
#: A plan file named ``-`` is read from standard input.
STDIN = "-"


def given_roots(args: argparse.Namespace) -> dict[str, str | int]:
    """The --root NAME=DIR|NAME=fd:N options as a mapping; a root given twice is an error."""
    roots: dict[str, str | int] = {}
    for name, value in args.root or []:
        if name in roots:
            raise RootError(f"--root {name} given twice")
        roots[name] = value
    return roots


def read_stdin() -> bytes:
    """A plan from standard input, refused beyond the loader's size limit."""
    from mountplan.loader.limits import MAX_FILE_BYTES

    data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"the plan on standard input is larger than {MAX_FILE_BYTES} bytes")
    return data


def load_plan(path: str, *, strict_kernel: bool = True) -> Any:
    """The plan at ``path`` (``-``: standard input), validated or taken from the plan cache."""
    from mountplan import loader

    if path == STDIN:
        return loader.load_text(read_stdin(), filename="<stdin>", strict_kernel=strict_kernel)
    # The CLI is the per-action path (a worker execs `mountplan run` per build
    # action): reuse the validated form of a plan file it has loaded before.
    # The loader directly, as api.load does: importing the api would import
    # what only other commands use (detached trees, change sets).
    return loader.load(path, strict_kernel=strict_kernel, cache=True)


def make_engine(args: argparse.Namespace) -> Any:
    """An engine with the state directory, lock timeout and --lazy of the command line."""
    from mountplan.engine import Engine

    return Engine(state_dir=args.state_dir, lock_timeout=args.lock_timeout, lazy=getattr(args, "lazy", False))


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """A result: ``data`` as JSON under --json, else ``text`` (when there is any)."""
    if getattr(args, "json", False):
        out_json({"format_version": FORMAT_VERSION, **data})
    elif text:
        out(text if text.endswith("\n") else text + "\n")

