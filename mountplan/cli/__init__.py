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
from typing import Any

from mountplan import __version__
from mountplan.errors import MountplanError, PlanError, RootError

from . import logs
from ._checks import UsageError, check_out_path, parse_lock_timeout, parse_root
from ._output import ArgumentParser, err, out, out_json
from ._schema_cmd import add_schema_parser
from ._serve_cmd import add_serve_parser
from ._watch_cmd import add_watch_parser

__all__ = ["UsageError", "build_parser", "main"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CHANGES = 10
#: ``plan``: the kernel refuses a mount apply would make (the same code a failed apply gets).
EXIT_KERNEL_REFUSES = 4


def _roots(args: argparse.Namespace) -> dict[str, str | int]:
    roots: dict[str, str | int] = {}
    for name, value in args.root or []:
        if name in roots:
            raise RootError(f"--root {name} given twice")
        roots[name] = value
    return roots


def _load(path: str, *, strict_kernel: bool = True) -> Any:
    from mountplan import api

    # The CLI is the per-action path (a worker execs `mountplan run` per build
    # action): reuse the validated form of a plan file it has loaded before.
    return api.load(path, strict_kernel=strict_kernel, cache=True)


def _engine(args: argparse.Namespace) -> Any:
    from mountplan.engine import Engine

    return Engine(state_dir=args.state_dir, lock_timeout=args.lock_timeout, lazy=getattr(args, "lazy", False))


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        out_json(data)
    elif text:
        out(text if text.endswith("\n") else text + "\n")


# --------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    from mountplan import loader

    results: list[dict[str, Any]] = []
    failed = False
    for path in args.plans:
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
        out_json({"format": 1, "results": results})
    return EXIT_USAGE if failed else EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from mountplan.engine.saved import read_saved_plan

    saved = read_saved_plan(args.plan)
    if saved is not None:
        if args.prune:
            raise UsageError("apply: --prune belongs to `mountplan plan -o FILE`; a saved plan applies what it says")
        result = _engine(args).apply_saved(saved, _roots(args))
    else:
        result = _engine(args).apply(_load(args.plan), _roots(args), prune=args.prune)
    data = {
        "updated": list(result.updated),
        "pruned": list(result.pruned),
        "plan": result.plan,
        "created": list(result.created),
        "replaced": list(result.replaced),
        "unchanged": list(result.unchanged),
        "state_file": result.state_file,
    }
    text = (
        f"Apply complete: {len(result.created)} created, {len(result.updated)} updated, "
        f"{len(result.replaced)} replaced, {len(result.pruned)} pruned, {len(result.unchanged)} unchanged."
    )
    _emit(args, data, text)
    return EXIT_OK


def cmd_destroy(args: argparse.Namespace) -> int:
    plan = _load(args.plan, strict_kernel=False)
    result = _engine(args).destroy(plan, _roots(args))
    data = {"plan": result.plan, "removed": list(result.removed), "already_gone": list(result.already_gone)}
    text = f"Destroy complete: {len(result.removed)} unmounted" + (
        f", {len(result.already_gone)} were already gone." if result.already_gone else "."
    )
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
            out(f"\nSaved this plan to {args.out}. To carry out exactly these changes, run:\n    mountplan apply {args.out}\n")
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
    lines = [f"{m['name']:<20} {m['root']}:{m['target']}  mnt_id={m['mnt_id']}" for m in mounts]
    lines.append(f"{len(mounts)} mount(s) managed; state {store.state_path}")
    _emit(args, {"plan": plan.name, "state_file": store.state_path, "mounts": mounts}, "\n".join(lines))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from mountplan import runner

    command = list(args.argv)
    if not command:
        raise UsageError("mountplan run: give the command after --, e.g. mountplan run PLAN -- make test")
    # Once the command has started, the exit status is the command's own.
    return runner.run(
        _load(args.plan),
        _roots(args),
        command,
        unshare=args.unshare,
        chroot=args.chroot,
        cwd=args.cwd,
        state_dir=args.state_dir,
        lock_timeout=args.lock_timeout,
    )


def cmd_graph(args: argparse.Namespace) -> int:
    from mountplan.compiler import compile_apply, compile_destroy, render_dot, render_mermaid

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
        _emit(args, {"format": 1, "plan": plan.name, "steps": compiled.to_json()}, "")
    else:
        out("\n".join(compiled.transcript()) + "\n")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="mountplan",
        description="Declarative mount plans for Linux, applied transactionally with the new mount API.",
    )
    parser.add_argument("--version", action="version", version=f"mountplan {__version__}")
    common = ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: every step)")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors")
    common.add_argument(
        "--log-format", choices=["auto", "console", "json", "logfmt"], default="auto", help="log rendering on stderr"
    )
    run = ArgumentParser(add_help=False)
    run.add_argument(
        "--root", action="append", type=parse_root, metavar="NAME=DIR|NAME=fd:N",
        help="directory (or inherited directory fd) for a named root",
    )
    run.add_argument("--state-dir", help="state and journal directory (default /run/mountplan or $XDG_RUNTIME_DIR/mountplan)")
    run.add_argument("--lock-timeout", type=parse_lock_timeout, default=30.0, metavar="SECONDS", help="wait this long for the state lock")
    run.add_argument("--json", action="store_true", help="machine-readable result on stdout")

    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", parents=[common], help="check plan files, report every problem")
    p.add_argument("plans", nargs="+", metavar="PLAN")
    p.add_argument("--json", action="store_true", help="diagnostics as JSON on stdout")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", parents=[common, run], help="dry run: what apply would change (touches nothing)")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--steps", action="store_true", help="also show the syscall transcript of a fresh apply")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 10 when changes are pending")
    p.add_argument("--prune", action="store_true", help="plan to remove mounts mountplan made that the plan no longer lists")
    p.add_argument(
        "-o", "--out", metavar="FILE",
        help="save this plan; `mountplan apply FILE` then does exactly this or refuses (exit 8) if the table changed",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("apply", parents=[common, run], help="make the plan's mounts (all or nothing)")
    p.add_argument("plan", metavar="PLAN|SAVED", help="a plan file, or a plan saved by `mountplan plan -o`")
    p.add_argument("--prune", action="store_true", help="also remove mounts mountplan made that the plan no longer lists")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("diff", parents=[common, run], help="report drift of the live table from the plan (exit 10 on drift)")
    p.add_argument("plan", metavar="PLAN")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("status", parents=[common, run], help="what mountplan manages for this plan and roots")
    p.add_argument("plan", metavar="PLAN")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("destroy", parents=[common, run], help="unmount what apply made, remove created mountpoints")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--lazy", action="store_true", help="detach busy mounts (MNT_DETACH) instead of failing")
    p.set_defaults(func=cmd_destroy)

    p = sub.add_parser(
        "run", parents=[common, run], help="apply, run a command, always destroy; exit with the command's status"
    )
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--unshare", action="store_true", help="all in a fresh private mount + pid namespace")
    p.add_argument("--chroot", metavar="ROOT|/PATH", help="chroot the command into a plan root (by name) or a path")
    p.add_argument("--cwd", metavar="DIR", help="working directory of the command (inside the chroot)")
    p.epilog = "The command follows `--`: mountplan run PLAN --root input=DIR -- make test"
    p.set_defaults(func=cmd_run, argv=[])

    p = sub.add_parser("recover", parents=[common, run], help="undo what interrupted runs left behind")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("graph", parents=[common], help="render the mount ordering graph")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--format", choices=["dot", "mermaid"], default="dot")
    p.add_argument("--steps", action="store_true", help="dot only: every syscall step")
    p.add_argument("--destroy", action="store_true", help="the destroy graph")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("steps", parents=[common], help="the ordered syscall transcript (touches nothing)")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--destroy", action="store_true", help="the destroy transcript")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_steps)

    add_schema_parser(sub, parents=[common])
    add_watch_parser(sub, parents=[common, run])
    add_serve_parser(sub, parents=[common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run` takes its command after `--`; split it off before argparse sees it,
    # so options after PLAN still belong to mountplan.
    command: list[str] = []
    if argv and argv[0] == "run" and "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if args.subcommand == "run":
        args.argv = command
    verbosity = -1 if args.quiet else args.verbose
    logs.configure(verbosity, args.log_format)
    try:
        code: int = args.func(args)
        return code
    except PlanError as exc:
        for diag in exc.diagnostics:
            err(f"{diag}\n")
        return exc.exit_code
    except MountplanError as exc:
        err(f"mountplan: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        err("mountplan: interrupted\n")
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_INTERNAL
    except Exception as exc:  # a bug: one line by default, the traceback with -vv
        if verbosity >= 2:
            raise
        err(f"mountplan: internal error: {type(exc).__name__}: {exc} (rerun with -vv for a traceback)\n")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
