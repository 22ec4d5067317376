"""`mountplan schema`: print the packaged plan schema, or install it where an editor can find it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._checks import UsageError

__all__ = ["SCHEMA_FILENAME", "add_schema_parser", "cmd_schema"]

SCHEMA_FILENAME = "mountplan.schema.json"

_EPILOG = """\
examples:
  mountplan schema > mountplan.schema.json
  mountplan schema --install ~/.local/share/mountplan
then start a plan with
  # yaml-language-server: $schema=/home/you/.local/share/mountplan/mountplan.schema.json
(see docs/editors.md)"""


def add_schema_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register the ``schema`` subcommand on the CLI's subparsers."""
    p = sub.add_parser(
        "schema",
        parents=parents,
        help="print the plan JSON Schema (for editors and check-jsonschema), or install it",
        description="Print the plan JSON Schema this mountplan validates against, exactly as packaged.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--install",
        metavar="DIR",
        help=f"write DIR/{SCHEMA_FILENAME} (DIR is created) and print its path instead of the schema",
    )
    p.set_defaults(func=cmd_schema)


def _schema_text() -> str:
    from mountplan.loader._schema import _schema_text as packaged

    return packaged()


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the schema, or write it to ``--install DIR`` and print the file's absolute path."""
    text = _schema_text()
    if args.install is None:
        sys.stdout.write(text)
        return 0
    directory = os.path.abspath(args.install)
    path = os.path.join(directory, SCHEMA_FILENAME)
    try:
        os.makedirs(directory, exist_ok=True)
        # Replace atomically: an editor reading the file mid-write would report a broken schema.
        import tempfile  # only here: it pulls in shutil, random, bz2, lzma

        fd, temp = tempfile.mkstemp(prefix=f".{SCHEMA_FILENAME}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.chmod(temp, 0o644)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as exc:
        raise UsageError(
            f"schema --install {args.install}: cannot write {path}: {exc.strerror or exc}"
        ) from None
    sys.stdout.write(path + "\n")
    return 0
