"""``mountplan watch``: report (or, with ``--reconcile``, repair) drift as the mount table changes.

One line per event on stdout: JSON with ``--json`` (``format_version`` 1, keys
sorted), else a short text line (drift also prints the diff). SIGINT and
SIGTERM end the watch after the current step; the exit status is then 0. A plan,
root or state error at start exits as ``mountplan plan`` does; under ``--json``
its error document is the one line printed, so stdout stays JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from mountplan.errors import MountplanError

from ._checks import UsageError
from ._output import error_document, out

__all__ = ["add_watch_parser", "cmd_watch"]

_MECHANISMS = {"auto": None, "fanotify": "fanotify", "mountinfo": "mountinfo-poll"}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def add_watch_parser(sub: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Register ``watch`` on the subcommand parsers ``sub`` (``parents``: common + run options)."""
    p = sub.add_parser(
        "watch", parents=list(parents),
        help="watch the mount table; report drift as JSON lines, or repair it with --reconcile",
    )
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--reconcile", action="store_true", help="repair drift with apply (rate limited, with backoff)")
    p.add_argument(
        "--mechanism", choices=sorted(_MECHANISMS), default="auto",
        help="change source: fanotify mount events (6.15+), the mountinfo poll, or the best available (default)",
    )
    p.add_argument(
        "--resync", type=_seconds, default=300.0, metavar="SECONDS",
        help="also re-diff this often, for changes no event reports (fspick reconfigure); 0 turns it off (default 300)",
    )
    p.add_argument("--max-applies", type=_positive_int, default=5, metavar="N", help="at most N applies per --window (default 5)")
    p.add_argument("--window", type=_seconds, default=60.0, metavar="SECONDS", help="rate-limit window (default 60)")
    p.add_argument(
        "--backoff-max", type=_seconds, default=300.0, metavar="SECONDS",
        help="longest wait between repairs while another writer keeps undoing them (default 300)",
    )
    p.set_defaults(func=cmd_watch)


def _text(event: Any) -> str:
    from mountplan.changes import render

    doc = event.to_json()
    kind = doc["event"]
    if kind == "watching":
        line = f"watching plan {doc['plan']!r} with {doc['mechanism']}" + (" (reconcile on)" if doc["reconcile"] else "")
        if doc.get("fallback"):
            line += f"; fanotify unavailable: {doc['fallback']}"
        return line + "\n"
    if kind == "drift" and event.changes is not None:
        return "drift:\n" + render(event.changes)
    if kind == "in-sync":
        return "in sync: the live mount table matches the plan\n"
    if kind == "reconciled":
        return f"reconciled: {len(doc['created'])} created, {len(doc['updated'])} updated, {len(doc['replaced'])} replaced\n"
    if kind == "reconcile-failed":
        return f"reconcile failed: {doc['error']} (retry in {doc['retry_in']}s)\n"
    if kind == "throttled":
        return f"throttled: next repair in {doc['retry_in']}s ({doc['applies_in_window']} in the window)\n"
    if kind == "error":
        return f"error: {doc['error']}\n"
    return f"{kind}\n"


def _json_line(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    sys.stdout.flush()  # one event, one line, now: a pipe reader must not wait for a buffer


def cmd_watch(args: argparse.Namespace) -> int:
    """Run the watch until SIGINT/SIGTERM; 0 when stopped that way."""
    if not args.json:
        return _watch(args)  # errors go to the CLI's usual report on stderr
    try:
        return _watch(args)
    except MountplanError as exc:
        # The CLI's error document is indented over several lines: a JSON-lines
        # reader needs it on one.
        _json_line(error_document(exc, exc.exit_code))
        return exc.exit_code


def _watch(args: argparse.Namespace) -> int:
    from mountplan import api
    from mountplan.engine import Engine
    from mountplan.watch import Mechanism, ReconcilePolicy, StopSignal, WatchEvent, watch

    try:
        policy = ReconcilePolicy(
            max_applies=args.max_applies, window=args.window,
            backoff_max=args.backoff_max, backoff_initial=min(1.0, args.backoff_max),
        )
    except ValueError as exc:
        raise UsageError(f"watch: {exc}") from None
    plan = api.load(args.plan)
    roots: dict[str, str | int] = {}
    for name, value in args.root or []:
        if name in roots:
            raise UsageError(f"--root {name} given twice")
        roots[name] = value
    wanted = _MECHANISMS[args.mechanism]

    def on_event(event: WatchEvent) -> None:
        if args.json:
            _json_line(event.to_json())
        else:
            out(_text(event))
            sys.stdout.flush()

    stop = StopSignal()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        watch(
            plan, roots, on_event=on_event, reconcile=args.reconcile, stop=stop,
            engine=Engine(state_dir=args.state_dir, lock_timeout=args.lock_timeout),
            mechanism=None if wanted is None else Mechanism(wanted), policy=policy,
            resync_interval=args.resync or None,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.close()
    return 0
