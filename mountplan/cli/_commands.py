"""The commands that act on a plan: one ``cmd_*`` function each, called with the parsed arguments."""

from __future__ import annotations

import argparse
from typing import Any

from ._checks import UsageError, check_out_path, unshare_namespaces
from ._common import (
    EXIT_CHANGES,
    EXIT_KERNEL_REFUSES,
    EXIT_OK,
    EXIT_USAGE,
    STDIN,
    emit,
    given_roots,
    load_plan,
    make_engine,
    read_stdin,
)
from ._output import err, out

__all__ = [
    "cmd_apply",
    "cmd_destroy",
    "cmd_diff",
    "cmd_graph",
    "cmd_plan",
    "cmd_recover",
    "cmd_run",
    "cmd_status",
    "cmd_steps",
    "cmd_validate",
]


def cmd_validate(args: argparse.Namespace) -> int:
    from mountplan import loader

    if args.plans.count(STDIN) > 1:
        raise UsageError("validate: standard input (-) can be read only once")
    results: list[dict[str, Any]] = []
    failed = False
    for path in args.plans:
        if path == STDIN:
            path = "<stdin>"
            _, diags = loader.check(read_stdin(), filename=path, strict_kernel=False)
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
        emit(args, {"results": results}, "")
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
        result = make_engine(args).apply_saved(saved, given_roots(args))
    else:
        result = make_engine(args).apply(load_plan(args.plan), given_roots(args), prune=args.prune)
    text = (
        f"Apply complete: {len(result.created)} created, {len(result.updated)} updated, "
        f"{len(result.replaced)} replaced, {len(result.pruned)} pruned, {len(result.unchanged)} unchanged."
    )
    emit(args, _apply_data(result), text)
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
    plan = load_plan(args.plan, strict_kernel=False)
    result = make_engine(args).destroy(plan, given_roots(args))
    data = {"plan": result.plan, "removed": list(result.removed), "already_gone": list(result.already_gone)}
    text = f"Destroy complete: {len(result.removed)} removed" + (
        f", {len(result.already_gone)} were already gone." if result.already_gone else "."
    )
    if result.kept:
        data["kept"] = list(result.kept)
        text += "".join(f"\n  ! {why}" for why in result.kept)
    emit(args, data, text)
    return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    result = make_engine(args).recover()
    data = {"undone": list(result.undone), "leftovers": list(result.leftovers)}
    lines = [f"undone: {item}" for item in result.undone] + [f"LEFT: {item}" for item in result.leftovers]
    lines.append(f"Recover complete: {len(result.undone)} undone, {len(result.leftovers)} left.")
    emit(args, data, "\n".join(lines))
    return 4 if result.leftovers else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from mountplan.changes import render
    from mountplan.compiler import compile_apply

    if args.out:
        if args.plan == STDIN:
            # The saved plan embeds the plan file's text, read again by the engine.
            raise UsageError("plan -o: a plan read from standard input cannot be saved; give the plan as a file")
        check_out_path(args.out)  # before anything is computed or printed
    plan = load_plan(args.plan)
    if args.out:
        saved, changes = make_engine(args).save_plan(plan, given_roots(args), prune=args.prune)
    else:
        changes = make_engine(args).plan(plan, given_roots(args), prune=args.prune)
    if args.json:
        doc = changes.to_json()
        if args.steps:
            doc["steps"] = compile_apply(plan).to_json()
        emit(args, doc, "")
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

    plan = load_plan(args.plan, strict_kernel=False)
    changes = make_engine(args).plan(plan, given_roots(args))
    if args.json:
        emit(args, changes.to_json(), "")
    else:
        out(render(changes))
    return EXIT_CHANGES if changes.has_drift else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan, strict_kernel=False)
    store, state = make_engine(args).load_state(plan, given_roots(args))
    mounts = [] if state is None else [m.to_json() for m in state.mounts]
    objects = [] if state is None else [o.to_json() for o in state.objects]
    lines = [f"{m['name']:<20} {m['root']}:{m['target']}  mnt_id={m['mnt_id']}" for m in mounts]
    lines += [f"{o['name']:<20} {o['root']}:{o['path']}  {o['kind']} ino={o['ino']}" for o in objects]
    lines.append(f"{len(mounts)} mount(s)" + (f" and {len(objects)} object(s)" if objects else "")
                 + f" managed; state {store.state_path}")
    data: dict[str, Any] = {"plan": plan.name, "state_file": store.state_path, "mounts": mounts}
    if objects:
        data["objects"] = objects
    emit(args, data, "\n".join(lines))
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
    plan = load_plan(args.plan)
    # Once the command has started, the exit status is the command's own.
    status = runner.run(
        plan,
        given_roots(args),
        command,
        unshare=unshare,
        chroot=args.chroot,
        cwd=args.cwd,
        state_dir=args.state_dir,
        lock_timeout=args.lock_timeout,
    )
    if args.json:
        events = args.collector.events if args.collector is not None else []
        emit(args, {"plan": plan.name, "command": command, "status": status, **_run_report(events, args.unshare)}, "")
    return status


def cmd_graph(args: argparse.Namespace) -> int:
    from mountplan.compiler import compile_apply, compile_destroy
    from mountplan.drawing import render_dot, render_mermaid

    if args.format == "mermaid" and args.steps:
        raise UsageError("graph: --steps draws every syscall step, which only the dot format shows; drop one of them")
    plan = load_plan(args.plan, strict_kernel=False)
    compiled = compile_destroy(plan) if args.destroy else compile_apply(plan)
    if args.format == "mermaid":
        out(render_mermaid(compiled))
    else:
        out(render_dot(compiled, steps=args.steps))
    return EXIT_OK


def cmd_steps(args: argparse.Namespace) -> int:
    from mountplan.compiler import compile_apply, compile_destroy

    plan = load_plan(args.plan, strict_kernel=False)
    compiled = compile_destroy(plan) if args.destroy else compile_apply(plan)
    if args.json:
        emit(args, {"plan": plan.name, "destroy": args.destroy, "steps": compiled.to_json()}, "")
    else:
        out("\n".join(compiled.transcript()) + "\n")
    return EXIT_OK

