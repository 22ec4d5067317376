"""plans/overlay.yaml three ways, side by side: applied() (apply + destroy), and detached() with each mechanism.

Each iteration makes the plan's tmpfs and overlay and runs nothing in them: it
measures what preparing and ending the mounts costs. Runs inside a private mount
namespace it makes itself (as root it re-executes under ``unshare -m
--propagation private``; otherwise mountplan.testing.run_in_sandbox). Nothing
reaches the host.

    .venv/bin/python bench/bench_detached.py [-n N]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _timing import summary, timed  # bench/ is sys.path[0] when a script runs

import mountplan
from mountplan.engine import Engine, Mechanism
from mountplan.engine.backend import KernelBackend
from mountplan.engine.context import Context
from mountplan.engine.detached import build_detached
from mountplan.testing import is_privileged, run_in_sandbox

REPO = Path(__file__).resolve().parents[1]
PLAN_PATH = REPO / "plans" / "overlay.yaml"
MARKER = "MOUNTPLAN_BENCH_IN_NAMESPACE"




def _bench(n: int) -> list[str]:
    # destroy warns for every apply that overlayfs's work/ dir is not empty: not what is measured here
    logging.getLogger("mountplan").setLevel(logging.ERROR)
    plan = mountplan.load(PLAN_PATH)
    base = tempfile.mkdtemp(prefix="bench_detached.")
    try:
        root = os.path.join(base, "tree")
        os.makedirs(os.path.join(root, "base", "bin"))
        roots: dict[str, str | int] = {"tree": root}
        engine = Engine(state_dir=os.path.join(base, "state"))
        ctx = Context(KernelBackend())

        def applied() -> None:
            engine.apply(plan, roots)
            engine.destroy(plan, roots)

        def detached(mechanism: Mechanism) -> Callable[[], None]:
            def once() -> None:
                build_detached(ctx, plan, roots, mechanism=mechanism).close()
            return once

        cases: list[tuple[str, Callable[[], None]]] = [
            ("applied(): apply + destroy", applied),
            ("detached(): detached-moves, build + close", detached(Mechanism.DETACHED_MOVES)),
            ("detached(): private-namespace, build + close", detached(Mechanism.PRIVATE_NAMESPACE)),
        ]
        who = "root" if is_privileged() else "unprivileged (user namespace)"
        lines = [f"kernel {os.uname().release}, python {sys.version.split()[0]}, {who}, plan overlay ({len(plan.mounts)} mounts)"]
        results: dict[str, list[float]] = {label: [] for label, _ in cases}
        for label, func in cases:
            func()  # warm-up: imports, feature probe, compile cache
        for _ in range(n):  # interleaved, so drift in machine load hits every case alike
            for label, func in cases:
                results[label] += timed(func, 1)
        lines += [summary(label, times, width=46, number='8.3f') for label, times in results.items()]
        return lines
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="iterations of each case")
    args = parser.parse_args()
    if is_privileged() and os.environ.get(MARKER) is None:
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("bench_detached: needs unshare(1) from util-linux when run as root")
        env = {**os.environ, MARKER: "1"}
        os.execve(unshare, [unshare, "-m", "--propagation", "private", sys.executable, *sys.argv], env)
    if os.environ.get(MARKER):
        lines = _bench(args.n)
    else:
        lines = run_in_sandbox(_bench, args.n, timeout=3600)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
