"""Command-line values checked before anything is planned, opened or changed."""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
from typing import Any

from mountplan.errors import MountplanError

__all__ = ["UsageError", "check_out_path", "parse_lock_timeout", "parse_root", "unshare_namespaces"]

#: Largest fd number: fds are C ints (an int that does not fit is no fd, not an overflow).
_FD_MAX = 2**31 - 1

_FD_RE = re.compile(r"fd:([0-9]+)\Z")


class UsageError(MountplanError):
    """A command line that parses but makes no sense."""

    exit_code = 2


def parse_root(text: str) -> tuple[str, str | int]:
    """``NAME=DIR`` or ``NAME=fd:N`` (N a decimal fd number, at most 2**31-1)."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR or NAME=fd:N, got {text!r}")
    if value.startswith("fd:"):
        found = _FD_RE.match(value)
        if found is None:
            raise argparse.ArgumentTypeError(f"bad fd number in {text!r}: give a decimal number, e.g. fd:3")
        fd = int(found.group(1))
        if fd > _FD_MAX:
            raise argparse.ArgumentTypeError(f"bad fd number in {text!r}: fd numbers go up to {_FD_MAX}")
        return name, fd
    return name, value


def parse_lock_timeout(text: str) -> float:
    """Seconds to wait for the state lock: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, 0 or more, got {text!r}")
    return value


def check_out_path(path: str) -> None:
    """Refuse a ``plan -o FILE`` that could not be written, before the plan is computed.

    The saved plan replaces FILE atomically (a temp file renamed over it), so FILE
    must be a regular file or not exist yet, in a directory that exists.
    """
    if not path:
        raise UsageError("plan -o: give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        parent_mode = os.stat(parent).st_mode
    except OSError as exc:
        raise UsageError(f"plan -o {path}: directory {parent} {_reason(exc)}") from None
    if not stat.S_ISDIR(parent_mode):
        raise UsageError(f"plan -o {path}: {parent} is not a directory")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"plan -o {path}: {_reason(exc)}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"plan -o {path}: is a directory; give the name of the file to write")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise UsageError(f"plan -o {path}: is not a regular file; a saved plan only ever replaces a regular file")


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    return f"cannot be used: {exc.strerror or exc}"


def unshare_namespaces(unshare: bool, share: list[str], every: frozenset[Any]) -> Any:
    """``run``'s --unshare and --share: False, True, or the namespaces of ``every`` not named in ``share``."""
    if not share:
        return unshare
    if not unshare:
        raise UsageError("run: --share keeps some of the caller's namespaces under --unshare; add --unshare")
    names = [name.strip() for value in share for name in value.split(",")]
    sharable = {n.value: n for n in every}
    unknown = sorted({name for name in names if name not in sharable})
    if unknown:
        raise UsageError(f"run: --share {', '.join(unknown)}: not a namespace to share (one of {', '.join(sorted(sharable))})")
    return every - {sharable[name] for name in names}
