"""``mountplan serve``: the worker mode, one process applying a plan for many clients over a unix socket.

The protocol is in docs/embedding.md ("Worker mode"). Once the socket accepts
connections one line goes to stdout (JSON with ``--json``), so a supervisor can
wait for it. SIGINT and SIGTERM stop the server: every live action is destroyed,
the socket is removed, and the exit status is 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ._checks import UsageError, parse_lock_timeout
from ._output import out

__all__ = ["add_serve_parser", "cmd_serve"]


def add_serve_parser(sub: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Register ``serve`` on the subcommand parsers ``sub`` (``parents``: the common options)."""
    p = sub.add_parser(
        "serve", parents=list(parents),
        help="worker mode: apply PLAN, or run a whole sandboxed command in it, for many clients over a unix socket",
        description="Serve one plan on a unix socket: each client request applies it beneath the root fds it "
        "passes (SCM_RIGHTS); destroy on request or when the client disconnects. See docs/embedding.md.",
    )
    p.add_argument("--socket", required=True, metavar="PATH", help="unix socket to create (mode 0600)")
    p.add_argument("--plan", required=True, metavar="PLAN", help="the plan file every request applies")
    p.add_argument("--state-dir", help="state and journal directory (default /run/mountplan or $XDG_RUNTIME_DIR/mountplan)")
    p.add_argument(
        "--lock-timeout", type=parse_lock_timeout, default=30.0, metavar="SECONDS",
        help="wait this long for a plan instance's state lock held by another mountplan",
    )
    p.add_argument("--lazy", action="store_true", help="destroy detaches busy mounts (MNT_DETACH) instead of failing")
    p.add_argument("--json", action="store_true", help="the ready line on stdout as JSON")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 when stopped that way."""
    from mountplan import api
    from mountplan.serve import FORMAT_VERSION, Server

    plan = api.load(args.plan, cache=True)
    server = Server(plan, args.socket, state_dir=args.state_dir, lock_timeout=args.lock_timeout, lazy=args.lazy)
    try:
        server.bind()
    except OSError as exc:
        raise UsageError(f"serve --socket {args.socket}: {exc.strerror or exc}") from None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.json:
            ready = {"event": "listening", "format_version": FORMAT_VERSION, "plan": plan.name,
                     "socket": args.socket, "pid": os.getpid()}
            sys.stdout.write(json.dumps(ready, sort_keys=True, separators=(",", ":")) + "\n")
        else:
            out(f"mountplan serve: plan {plan.name!r} on {args.socket} (pid {os.getpid()})\n")
        sys.stdout.flush()  # a supervisor waits for this line: it must not sit in a buffer
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
