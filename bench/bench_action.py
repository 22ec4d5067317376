"""Per-action cost of plans/build-action.yaml: apply+destroy in process, via the CLI, and runner.run.

Runs inside a private mount namespace it makes itself: as root it re-executes
under ``unshare -m --propagation private``; otherwise it uses
mountplan.testing.run_in_sandbox (user namespaces). Nothing reaches the host.

    .venv/bin/python bench/bench_action.py [--api N] [--cli N] [--run N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import summary, timed  # bench/ is sys.path[0] when a script runs

import mountplan
from mountplan import runner
from mountplan.engine import Engine
from mountplan.testing import is_privileged, run_in_sandbox

REPO = Path(__file__).resolve().parents[1]
PLAN_PATH = REPO / "plans" / "build-action.yaml"
MARKER = "MOUNTPLAN_BENCH_IN_NAMESPACE"




def _input_root(base: str) -> str:
    root = os.path.join(base, "input")
    os.makedirs(os.path.join(root, "toolchain", "bin"))
    Path(root, "toolchain", "bin", "cc").write_text("#!/bin/sh\n")
    return root


def _bench(api_n: int, cli_n: int, run_n: int) -> list[str]:
    plan = mountplan.load(PLAN_PATH)
    base = tempfile.mkdtemp(prefix="bench_action.")
    try:
        root = _input_root(base)
        state = os.path.join(base, "state")
        roots = {"input": root}
        lines = [
            (
                f"kernel {os.uname().release}, python {sys.version.split()[0]}, "
                f"{'root' if is_privileged() else 'unprivileged (user namespace)'}, "
                f"plan build-action ({len(plan.mounts)} mounts, {len(plan.objects)} objects)"
            )
        ]

        engine = Engine(state_dir=state)
        applies: list[float] = []
        destroys: list[float] = []
        for _ in range(api_n):
            t0 = time.perf_counter()
            engine.apply(plan, roots)
            t1 = time.perf_counter()
            engine.destroy(plan, roots)
            t2 = time.perf_counter()
            applies.append(t1 - t0)
            destroys.append(t2 - t1)
        lines.append(summary("API apply", applies))
        lines.append(summary("API destroy", destroys))
        lines.append(summary("API apply+destroy", [a + d for a, d in zip(applies, destroys, strict=True)]))

        cli = [sys.executable, "-m", "mountplan"]
        common = [str(PLAN_PATH), "--root", f"input={root}", "--state-dir", state, "-q"]
        cli_apply: list[float] = []
        cli_destroy: list[float] = []
        for _ in range(cli_n):
            cli_apply += timed(lambda: subprocess.run([*cli, "apply", *common], check=True, stdout=subprocess.DEVNULL), 1)
            cli_destroy += timed(
                lambda: subprocess.run([*cli, "destroy", *common], check=True, stdout=subprocess.DEVNULL), 1
            )
        lines.append(summary("CLI `mountplan apply` process", cli_apply))
        lines.append(summary("CLI `mountplan destroy` process", cli_destroy))
        lines.append(summary("CLI apply+destroy", [a + d for a, d in zip(cli_apply, cli_destroy, strict=True)]))

        for unshare in (False, True):
            label = f"runner.run /bin/true ({'unshare' if unshare else 'in place'})"
            times = timed(
                lambda u=unshare: runner.run(plan, roots, ["/bin/true"], unshare=u, state_dir=state), run_n  # type: ignore[misc]
            )
            lines.append(summary(label, times))
        return lines
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", type=int, default=200, help="in-process apply+destroy iterations")
    parser.add_argument("--cli", type=int, default=30, help="CLI apply+destroy iterations")
    parser.add_argument("--run", type=int, default=50, help="runner.run iterations per mode")
    args = parser.parse_args()
    if is_privileged() and os.environ.get(MARKER) is None:
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("bench_action: needs unshare(1) from util-linux when run as root")
        env = {**os.environ, MARKER: "1"}
        os.execve(unshare, [unshare, "-m", "--propagation", "private", sys.executable, *sys.argv], env)
    if os.environ.get(MARKER):
        lines = _bench(args.api, args.cli, args.run)
    else:
        lines = run_in_sandbox(_bench, args.api, args.cli, args.run, timeout=3600)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
