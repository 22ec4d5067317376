"""The argument parser: every command's options, or only the one being run."""

from __future__ import annotations

import argparse
from typing import Any

from mountplan import __version__

from ._checks import parse_lock_timeout, parse_root
from ._commands import (
    cmd_apply,
    cmd_destroy,
    cmd_diff,
    cmd_graph,
    cmd_plan,
    cmd_recover,
    cmd_run,
    cmd_status,
    cmd_steps,
    cmd_validate,
)
from ._help import DESCRIPTIONS, EXAMPLES
from ._output import ArgumentParser
from ._program import OnlyOne

__all__ = ["COMMANDS", "build_parser"]


def _add_log_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v/-q/--log-format: before the command (``top``) or after it (each subcommand's, adding to the former)."""
    parser.add_argument(
        "-v", "--verbose", action="count", dest="verbose" if top else "sub_verbose", default=0,
        help="more log output (-vv: every step)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS, help="only errors")
    parser.add_argument(
        "--log-format", choices=["auto", "console", "json", "logfmt"], default="auto" if top else argparse.SUPPRESS,
        help="log rendering on stderr (auto: console on a terminal, else logfmt)",
    )


def _command(sub: Any, name: str, parents: list[argparse.ArgumentParser], help: str) -> ArgumentParser:
    parser: ArgumentParser = sub.add_parser(name, parents=parents, help=help)
    _describe(name, parser, help)
    return parser


def _describe(name: str, parser: argparse.ArgumentParser, help: str | None) -> None:
    """A description and examples on the subcommand's --help (kept where the subcommand has its own)."""
    import textwrap

    description = parser.description or DESCRIPTIONS.get(name) or help or ""
    parser.description = textwrap.fill(description, 88)
    examples = EXAMPLES.get(name)
    if parser.epilog is None and examples:
        parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line (also what shell completion and the man page are generated from).

    ``only``: build just that command (it must be one), for parsing a command line that names it.
    """
    parser = ArgumentParser(
        prog="mountplan",
        description="Declarative mount plans for Linux, applied transactionally with the new mount API.",
        epilog="Logging options (-v, -q, --log-format) go before or after the command. "
        "A PLAN of - is read from standard input. Run `mountplan COMMAND --help` for each command's examples; "
        "exit codes are listed in docs/cli.md and mountplan(1).",
    )
    parser.add_argument("--version", action="version", version=f"mountplan {__version__}")
    _add_log_options(parser, top=True)
    common = ArgumentParser(add_help=False)
    _add_log_options(common, top=False)
    run = ArgumentParser(add_help=False)
    run.add_argument(
        "--root", action="append", type=parse_root, metavar="NAME=DIR|NAME=fd:N",
        help="directory (or inherited directory fd) for a named root",
    )
    run.add_argument("--state-dir", help="state and journal directory (default /run/mountplan or $XDG_RUNTIME_DIR/mountplan)")
    run.add_argument("--lock-timeout", type=parse_lock_timeout, default=30.0, metavar="SECONDS", help="wait this long for the state lock")
    run.add_argument("--json", action="store_true", help="machine-readable result on stdout (errors too)")

    sub: Any = OnlyOne(parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND"), only)
    plan_help = "plan file (- reads standard input)"

    p = _command(sub, "validate", [common], "check plan files, report every problem")
    p.add_argument("plans", nargs="+", metavar="PLAN", help="plan files (- reads standard input)")
    p.add_argument("--json", action="store_true", help="diagnostics as JSON on stdout")
    p.set_defaults(func=cmd_validate)

    p = _command(sub, "plan", [common, run], "dry run: what apply would change (touches nothing)")
    p.add_argument("plan", metavar="PLAN", help=plan_help)
    p.add_argument("--steps", action="store_true", help="also show the syscall transcript of a fresh apply")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 10 when changes are pending")
    p.add_argument("--prune", action="store_true", help="plan to remove mounts mountplan made that the plan no longer lists")
    p.add_argument(
        "-o", "--out", metavar="FILE",
        help="save this plan; `mountplan apply FILE` then does exactly this or refuses (exit 8) if the table changed",
    )
    p.set_defaults(func=cmd_plan)

    p = _command(sub, "apply", [common, run], "make the plan's mounts (all or nothing)")
    p.add_argument("plan", metavar="PLAN|SAVED", help="a plan file (- reads standard input), or a plan saved by `mountplan plan -o`")
    p.add_argument("--prune", action="store_true", help="also remove mounts mountplan made that the plan no longer lists")
    p.set_defaults(func=cmd_apply)

    p = _command(sub, "diff", [common, run], "report drift of the live table from the plan (exit 10 on drift)")
    p.add_argument("plan", metavar="PLAN", help=plan_help)
    p.set_defaults(func=cmd_diff)

    p = _command(sub, "status", [common, run], "what mountplan manages for this plan and roots")
    p.add_argument("plan", metavar="PLAN", help=plan_help)
    p.set_defaults(func=cmd_status)

    p = _command(sub, "destroy", [common, run], "unmount what apply made, remove created mountpoints")
    p.add_argument("plan", metavar="PLAN", help=plan_help)
    p.add_argument("--lazy", action="store_true", help="detach busy mounts (MNT_DETACH) instead of failing")
    p.set_defaults(func=cmd_destroy)

    p = _command(sub, "run", [common, run], "apply, run a command, always destroy; exit with the command's status")
    p.add_argument("plan", metavar="PLAN", help=plan_help)
    p.add_argument(
        "--unshare", action="store_true",
        help="all in fresh namespaces: mount, pid, net, ipc, uts, cgroup (and user when not root)",
    )
    p.add_argument(
        "--share", action="append", default=[], metavar="NS[,NS]",
        help="with --unshare: keep the caller's net, ipc, uts or cgroup namespace (repeatable)",
    )
    p.add_argument("--share-net", action="append_const", const="net", dest="share", help="with --unshare: same as --share net")
    p.add_argument("--chroot", metavar="ROOT|/PATH", help="chroot the command into a plan root (by name) or a path")
    p.add_argument("--cwd", metavar="DIR", help="working directory of the command (inside the chroot)")
    p.epilog = "The command follows `--`.\n" + "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES["run"])
    p.set_defaults(func=cmd_run, argv=[])

    p = _command(sub, "recover", [common, run], "undo what interrupted runs left behind")
    p.set_defaults(func=cmd_recover)

    p = _command(sub, "graph", [common], "render the mount ordering graph")
    p.add_argument("plan", metavar="PLAN", help=plan_help)
    p.add_argument("--format", choices=["dot", "mermaid"], default="dot")
    p.add_argument("--steps", action="store_true", help="dot only: every syscall step")
    p.add_argument("--destroy", action="store_true", help="the destroy graph")
    p.set_defaults(func=cmd_graph)

    p = _command(sub, "steps", [common], "the ordered syscall transcript (touches nothing)")
    p.add_argument("plan", metavar="PLAN", help=plan_help)
    p.add_argument("--destroy", action="store_true", help="the destroy transcript")
    p.add_argument("--json", action="store_true", help="the steps as JSON on stdout")
    p.set_defaults(func=cmd_steps)

    # The other commands live in their own modules, imported only when they are
    # built: a `run` has no use for watch's or serve's code.
    if only in (None, "schema"):
        from ._schema_cmd import add_schema_parser

        add_schema_parser(sub, parents=[common])
    if only in (None, "watch"):
        from ._watch_cmd import add_watch_parser

        add_watch_parser(sub, parents=[common, run])
    if only in (None, "serve"):
        from ._serve_cmd import add_serve_parser

        add_serve_parser(sub, parents=[common])
    if only in (None, "completion", "manpage"):
        from ._completion_cmd import add_completion_parsers

        add_completion_parsers(sub, parents=[common], build_parser=build_parser)
    for action in sub._choices_actions:  # the help line of each command, as registered
        _describe(action.dest, sub.choices[action.dest], action.help)
    return parser


#: Every command ``build_parser`` makes (tests/cli checks the list is complete).
COMMANDS = frozenset(
    {"validate", "plan", "apply", "diff", "status", "destroy", "run", "recover", "graph", "steps", "schema",
     "watch", "serve", "completion", "manpage"}
)

