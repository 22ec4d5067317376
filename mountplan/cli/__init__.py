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

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from mountplan import __version__
from mountplan.errors import MountplanError, PlanError, RootError

from . import logs
from ._checks import UsageError, check_out_path, parse_lock_timeout, parse_root, unshare_namespaces
from ._completion_cmd import add_completion_parsers
from ._help import DESCRIPTIONS, EXAMPLES
from ._output import FORMAT_VERSION, ArgumentParser, ParserUsageError, err, error_document, out, out_json
from ._program import OnlyOne, exit_fast
from ._schema_cmd import add_schema_parser
from ._serve_cmd import add_serve_parser
from ._watch_cmd import add_watch_parser

__all__ = ["UsageError", "build_parser", "console", "main"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CHANGES = 10
#: ``plan``: the kernel refuses a mount apply would make (the same code a failed apply gets).
EXIT_KERNEL_REFUSES = 4
#: A plan file named ``-`` is read from standard input.
STDIN = "-"


def _roots(args: argparse.Namespace) -> dict[str, str | int]:
    roots: dict[str, str | int] = {}
    for name, value in args.root or []:
        if name in roots:
            raise RootError(f"--root {name} given twice")
        roots[name] = value
    return roots


def _read_stdin() -> bytes:
    from mountplan.loader.limits import MAX_FILE_BYTES

    data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"the plan on standard input is larger than {MAX_FILE_BYTES} bytes")
    return data


def _load(path: str, *, strict_kernel: bool = True) -> Any:
    from mountplan import api, loader

    if path == STDIN:
        return loader.load_text(_read_stdin(), filename="<stdin>", strict_kernel=strict_kernel)
    # The CLI is the per-action path (a worker execs `mountplan run` per build
    # action): reuse the validated form of a plan file it has loaded before.
    return api.load(path, strict_kernel=strict_kernel, cache=True)


def _engine(args: argparse.Namespace) -> Any:
    from mountplan.engine import Engine

    return Engine(state_dir=args.state_dir, lock_timeout=args.lock_timeout, lazy=getattr(args, "lazy", False))


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        out_json({"format_version": FORMAT_VERSION, **data})
    elif text:
        out(text if text.endswith("\n") else text + "\n")


# --------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    from mountplan import loader

    if args.plans.count(STDIN) > 1:
        raise UsageError("validate: standard input (-) can be read only once")
    results: list[dict[str, Any]] = []
    failed = False
    for path in args.plans:
        if path == STDIN:
            path = "<stdin>"
            _, diags = loader.check(_read_stdin(), filename=path, strict_kernel=False)
        else:
            _, diags = loader.check_file(path, strict_kernel=False)
        errors = [d for d in diags if d.severity is loader.Severity.ERROR]
        failed = failed or bool(errors)
        results.append({"file": path, "valid": not errors, "diagnostics": [d.to_json() for d in diags]})
        if not args.json:
            for d in diags:
                err(f"{d}\n")
            if not errors and not args.quiet:
                out(f"{path}: valid\n")
    if args.json:
        _emit(args, {"results": results}, "")
    return EXIT_USAGE if failed else EXIT_OK


def _apply_data(result: Any) -> dict[str, Any]:
    return {
        "plan": result.plan,
        "created": list(result.created),
        "updated": list(result.updated),
        "replaced": list(result.replaced),
        "pruned": list(result.pruned),
        "unchanged": list(result.unchanged),
        "state_file": result.state_file,
    }


def cmd_apply(args: argparse.Namespace) -> int:
    from mountplan.engine.saved import read_saved_plan

    saved = None if args.plan == STDIN else read_saved_plan(args.plan)
    if saved is not None:
        if args.prune:
            raise UsageError("apply: --prune belongs to `mountplan plan -o FILE`; a saved plan applies what it says")
        _use_saved_state_dir(args, saved)
        result = _engine(args).apply_saved(saved, _roots(args))
    else:
        result = _engine(args).apply(_load(args.plan), _roots(args), prune=args.prune)
    text = (
        f"Apply complete: {len(result.created)} created, {len(result.updated)} updated, "
        f"{len(result.replaced)} replaced, {len(result.pruned)} pruned, {len(result.unchanged)} unchanged."
    )
    _emit(args, _apply_data(result), text)
    return EXIT_OK


def _use_saved_state_dir(args: argparse.Namespace, saved: Any) -> None:
    """A saved plan's state is where `plan -o` found it: that directory, unless --state-dir says
    another, which is refused (exit 2) when it is not the same directory: its state is not this plan's."""
    import shlex

    from mountplan.engine.saved import same_dir

    if args.state_dir is None:
        args.state_dir = saved.state_dir  # None in a format 1 saved plan: the default, as before
    elif saved.state_dir is not None and not same_dir(args.state_dir, saved.state_dir):
        raise UsageError(
            f"apply: this saved plan's state lives in {saved.state_dir}, not --state-dir {args.state_dir}; "
            f"run `mountplan apply {shlex.quote(args.plan)}` without --state-dir, "
            f"or plan again with --state-dir {args.state_dir}"
        )


def cmd_destroy(args: argparse.Namespace) -> int:
    plan = _load(args.plan, strict_kernel=False)
    result = _engine(args).destroy(plan, _roots(args))
    data = {"plan": result.plan, "removed": list(result.removed), "already_gone": list(result.already_gone)}
    text = f"Destroy complete: {len(result.removed)} removed" + (
        f", {len(result.already_gone)} were already gone." if result.already_gone else "."
    )
    if result.kept:
        data["kept"] = list(result.kept)
        text += "".join(f"\n  ! {why}" for why in result.kept)
    _emit(args, data, text)
    return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    result = _engine(args).recover()
    data = {"undone": list(result.undone), "leftovers": list(result.leftovers)}
    lines = [f"undone: {item}" for item in result.undone] + [f"LEFT: {item}" for item in result.leftovers]
    lines.append(f"Recover complete: {len(result.undone)} undone, {len(result.leftovers)} left.")
    _emit(args, data, "\n".join(lines))
    return 4 if result.leftovers else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from mountplan.changes import render
    from mountplan.compiler import compile_apply

    if args.out:
        if args.plan == STDIN:
            # The saved plan embeds the plan file's text, read again by the engine.
            raise UsageError("plan -o: a plan read from standard input cannot be saved; give the plan as a file")
        check_out_path(args.out)  # before anything is computed or printed
    plan = _load(args.plan)
    if args.out:
        saved, changes = _engine(args).save_plan(plan, _roots(args), prune=args.prune)
    else:
        changes = _engine(args).plan(plan, _roots(args), prune=args.prune)
    if args.json:
        doc = changes.to_json()
        if args.steps:
            doc["steps"] = compile_apply(plan).to_json()
        _emit(args, doc, "")
    else:
        text = render(changes)
        if args.steps:
            text += "\nSteps for a fresh apply:\n" + "\n".join(compile_apply(plan).transcript()) + "\n"
        out(text)
    if args.out:
        try:
            saved.write(args.out)
        except OSError as exc:  # checked above; this is a race or a full disk
            raise UsageError(f"plan -o {args.out}: cannot write the saved plan: {exc.strerror or exc}") from None
        if not args.json:
            import shlex  # the hint is a command that works as printed (the state dir is in the file)

            out(f"\nSaved this plan to {args.out}. To carry out exactly these changes, run:\n"
                f"    mountplan apply {shlex.quote(args.out)}\n")
    if changes.problems:
        return EXIT_KERNEL_REFUSES  # apply would fail: say so now, not half-way through
    return EXIT_CHANGES if args.detailed_exitcode and changes.has_changes else EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from mountplan.changes import render

    plan = _load(args.plan, strict_kernel=False)
    changes = _engine(args).plan(plan, _roots(args))
    if args.json:
        _emit(args, changes.to_json(), "")
    else:
        out(render(changes))
    return EXIT_CHANGES if changes.has_drift else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    plan = _load(args.plan, strict_kernel=False)
    store, state = _engine(args).load_state(plan, _roots(args))
    mounts = [] if state is None else [m.to_json() for m in state.mounts]
    objects = [] if state is None else [o.to_json() for o in state.objects]
    lines = [f"{m['name']:<20} {m['root']}:{m['target']}  mnt_id={m['mnt_id']}" for m in mounts]
    lines += [f"{o['name']:<20} {o['root']}:{o['path']}  {o['kind']} ino={o['ino']}" for o in objects]
    lines.append(f"{len(mounts)} mount(s)" + (f" and {len(objects)} object(s)" if objects else "")
                 + f" managed; state {store.state_path}")
    data: dict[str, Any] = {"plan": plan.name, "state_file": store.state_path, "mounts": mounts}
    if objects:
        data["objects"] = objects
    _emit(args, data, "\n".join(lines))
    return EXIT_OK


def _run_report(events: list[dict[str, Any]], unshare: bool) -> dict[str, Any]:
    """What ``run`` applied and destroyed, from the library's events (None with --unshare: not seen here)."""
    if unshare:
        # apply and destroy happen in the helper process of the new namespace; its events stay there.
        return {"applied": None, "destroyed": None}

    def names(event: str, key: str = "mount") -> list[str]:
        return [str(e[key]) for e in events if e.get("event") == event and key in e]

    return {
        "applied": {
            "created": names("mount.created") + names("object.created", "object"),
            "updated": names("mount.updated") + names("object.updated", "object"),
        },
        "destroyed": {
            "removed": names("mount.removed") + names("object.removed", "object"),
            "already_gone": names("destroy.gone") + names("destroy.object_gone", "object"),
        },
    }


def cmd_run(args: argparse.Namespace) -> int:
    from mountplan import runner

    command = list(args.argv)
    if not command:
        raise UsageError("mountplan run: give the command after --, e.g. mountplan run PLAN -- make test")
    unshare = unshare_namespaces(args.unshare, args.share, runner.ALL_NAMESPACES)
    plan = _load(args.plan)
    # Once the command has started, the exit status is the command's own.
    status = runner.run(
        plan,
        _roots(args),
        command,
        unshare=unshare,
        chroot=args.chroot,
        cwd=args.cwd,
        state_dir=args.state_dir,
        lock_timeout=args.lock_timeout,
    )
    if args.json:
        events = args.collector.events if args.collector is not None else []
        _emit(args, {"plan": plan.name, "command": command, "status": status, **_run_report(events, args.unshare)}, "")
    return status


def cmd_graph(args: argparse.Namespace) -> int:
    from mountplan.compiler import compile_apply, compile_destroy
    from mountplan.drawing import render_dot, render_mermaid

    if args.format == "mermaid" and args.steps:
        raise UsageError("graph: --steps draws every syscall step, which only the dot format shows; drop one of them")
    plan = _load(args.plan, strict_kernel=False)
    compiled = compile_destroy(plan) if args.destroy else compile_apply(plan)
    if args.format == "mermaid":
        out(render_mermaid(compiled))
    else:
        out(render_dot(compiled, steps=args.steps))
    return EXIT_OK


def cmd_steps(args: argparse.Namespace) -> int:
    from mountplan.compiler import compile_apply, compile_destroy

    plan = _load(args.plan, strict_kernel=False)
    compiled = compile_destroy(plan) if args.destroy else compile_apply(plan)
    if args.json:
        _emit(args, {"plan": plan.name, "destroy": args.destroy, "steps": compiled.to_json()}, "")
    else:
        out("\n".join(compiled.transcript()) + "\n")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


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

    add_schema_parser(sub, parents=[common])
    add_watch_parser(sub, parents=[common, run])
    add_serve_parser(sub, parents=[common])
    add_completion_parsers(sub, parents=[common], build_parser=build_parser)
    for action in sub._choices_actions:  # the help line of each command, as registered
        _describe(action.dest, sub.choices[action.dest], action.help)
    return parser


#: Every command ``build_parser`` makes (tests/cli checks the list is complete).
_COMMANDS = frozenset(
    {"validate", "plan", "apply", "diff", "status", "destroy", "run", "recover", "graph", "steps", "schema",
     "watch", "serve", "completion", "manpage"}
)


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
