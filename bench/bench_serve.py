"""Issue 13 item 3: per-action latency through `mountplan serve` next to the in-process API, alternating.

    .venv/bin/python bench/bench_serve.py [-n 300] [--warmup 20]

Everything runs in a private mount namespace the script makes (root: re-exec
under ``unshare -m --propagation private``; otherwise
mountplan.testing.run_in_sandbox), with the roots, the state dirs and the socket
on a private tmpfs mounted there (/tmp is ext4 on this VM). The plan is
plans/build-action.yaml (13 mounts, 5 symlinks).

Each round times, in alternating order (so drift in the machine hits both alike):

- ``api``: ``Engine(state_dir=...).apply(plan, {"input": fd})`` then ``.destroy(...)``
  in this process, root given as an int fd;
- ``serve``: over one open connection to a ``mountplan serve`` process started
  once (its start-up is not counted), an ``apply`` request carrying the root fd
  (SCM_RIGHTS) and its reply, then a ``destroy`` request and its reply;
- ``serve, connection per action``: connect, apply, destroy, close.

Each path has its own root directory and state dir. Prints median and p95 per
action and the ratio of medians serve/api (issue 13 asks for at most 2x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _serve_client import ServeClient, start_server  # bench/ is sys.path[0] when a script runs
from _timing import summary

import mountplan
from mountplan._kernel import (
    MountAttr,
    MoveMountFlag,
    fsconfig_create,
    fsconfig_set_string,
    fsmount,
    fsopen,
    move_mount,
)
from mountplan.engine import Engine
from mountplan.testing import is_privileged, run_in_sandbox

REPO = Path(__file__).resolve().parents[1]
PLAN_PATH = REPO / "plans" / "build-action.yaml"
MARKER = "MOUNTPLAN_BENCH_IN_NAMESPACE"


def _private_tmpfs(path: str) -> None:
    with fsopen("tmpfs") as fs:
        fsconfig_set_string(fs.fileno(), "source", "bench_serve")
        fsconfig_set_string(fs.fileno(), "mode", "0755")
        fsconfig_create(fs.fileno())
        with fsmount(fs.fileno(), MountAttr(0)) as mnt:
            target = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                move_mount(mnt.fileno(), "", target, "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH)
            finally:
                os.close(target)


def _input_root(base: str, name: str) -> str:
    root = os.path.join(base, name)
    os.makedirs(os.path.join(root, "toolchain", "bin"))
    Path(root, "toolchain", "bin", "cc").write_text("#!/bin/sh\n")
    return root


def _bench(rounds: int, warmup: int) -> list[str]:
    plan = mountplan.load(PLAN_PATH)
    base = tempfile.mkdtemp(prefix="bench_serve.")
    _private_tmpfs(base)
    server: subprocess.Popen[str] | None = None
    fds: list[int] = []
    try:
        api_root, serve_root = _input_root(base, "api"), _input_root(base, "serve")
        socket_path = os.path.join(base, "serve.sock")
        server = start_server([sys.executable, "-m", "mountplan"], socket_path, str(PLAN_PATH),
                              os.path.join(base, "state-serve"), cwd=base)

        api_fd = os.open(api_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        serve_fd = os.open(serve_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        fds += [api_fd, serve_fd]
        engine = Engine(state_dir=os.path.join(base, "state-api"))
        client = ServeClient(socket_path)

        def api() -> None:
            engine.apply(plan, {"input": api_fd})
            engine.destroy(plan, {"input": api_fd})

        def serve() -> None:
            client.action(serve_fd)

        def serve_connect() -> None:
            fresh = ServeClient(socket_path)
            try:
                fresh.action(serve_fd)
            finally:
                fresh.close()

        cases: dict[str, Callable[[], None]] = {
            "api: Engine.apply + destroy (fd root)": api,
            "serve: apply + destroy requests": serve,
            "serve: connect, apply, destroy, close": serve_connect,
        }
        times: dict[str, list[float]] = {label: [] for label in cases}
        for index in range(warmup + rounds):
            order = list(cases.items())
            if index % 2:
                order.reverse()
            for label, func in order:
                start = time.perf_counter()
                func()
                elapsed = time.perf_counter() - start
                if index >= warmup:
                    times[label].append(elapsed)
        client.close()

        api_median = statistics.median(times["api: Engine.apply + destroy (fd root)"])
        lines = [
            (
                f"kernel {os.uname().release}, python {sys.version.split()[0]}, "
                f"{'root' if is_privileged() else 'unprivileged (user namespace)'}, {os.cpu_count()} cpus, "
                f"plan build-action ({len(plan.mounts)} mounts, {len(plan.objects)} objects), roots + state + socket on a private tmpfs"
            ),
            f"{rounds} alternating rounds after {warmup} warm-up rounds; per action = apply + destroy",
        ]
        for label, seconds in times.items():
            ratio = statistics.median(seconds) / api_median
            lines.append(f"{summary(label, seconds, width=44, number='7.2f')}   {ratio:4.2f}x api")
        return lines
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        for fd in fds:
            os.close(fd)
        subprocess.run(["umount", "-l", base], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=300, help="timed rounds (each runs every case once)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds first")
    args = parser.parse_args()
    if is_privileged() and os.environ.get(MARKER) is None:
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("bench_serve: needs unshare(1) from util-linux when run as root")
        env = {**os.environ, MARKER: "1"}
        os.execve(unshare, [unshare, "-m", "--propagation", "private", sys.executable, *sys.argv], env)
    if os.environ.get(MARKER):
        lines = _bench(args.rounds, args.warmup)
    else:
        lines = run_in_sandbox(_bench, args.rounds, args.warmup, timeout=3600)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
