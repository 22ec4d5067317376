"""Time read_live_table (statmount, mountinfo), a whole `plan`, and findmnt --json over 1k/5k/10k tmpfs mounts.

`plan` is a 10-mount plan, already applied, planned again against the table:
in-process (Engine.plan: open roots, read state, read the table, diff) and as a
`mountplan plan` process (interpreter start-up included), next to a
`findmnt --json` process on the same table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from mountplan._kernel import (
    MoveMountFlag,
    OpenFlag,
    Resolve,
    fsconfig_create,
    fsconfig_set_string,
    fsmount,
    fsopen,
    move_mount,
    openat2,
)
from mountplan.engine import Engine
from mountplan.livetable import TableSource, read_live_table
from mountplan.testing import run_in_sandbox

PLAN_MOUNTS = 10
PLAN_YAML = "version: 1\nname: bench-plan\nroots: {r: {}}\nmounts:\n" + "".join(
    f"  - {{name: p{i}, target: p{i}, type: tmpfs, options: {{size: 1M}}}}\n" for i in range(PLAN_MOUNTS)
)

_DIR = OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC
_EMPTY = MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH


def _mount_tmpfs(dirfd: int, name: str, source: str) -> None:
    with fsopen("tmpfs") as fs:
        fsconfig_set_string(fs.fileno(), "source", source)
        fsconfig_create(fs.fileno())
        with fsmount(fs.fileno()) as mnt, openat2(dirfd, name, _DIR, Resolve.BENEATH) as target:
            move_mount(mnt.fileno(), "", target.fileno(), "", _EMPTY)


def _best(func: Callable[[], object], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def _findmnt() -> None:
    subprocess.run(["/usr/bin/findmnt", "--json"], check=True, stdout=subprocess.DEVNULL)


def _bench(sizes: list[int], repeat: int) -> list[str]:
    # A scratch tmpfs so the thousands of directories never touch the host's /tmp.
    os.makedirs("/tmp/bench_livetable", exist_ok=True)
    with openat2(-100, "/tmp", _DIR, Resolve(0)) as tmp:
        _mount_tmpfs(tmp.fileno(), "bench_livetable", "bench")
    base = os.open("/tmp/bench_livetable", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    work = "/tmp/bench_livetable/plan"
    os.makedirs(f"{work}/root")
    with open(f"{work}/plan.yaml", "w", encoding="utf-8") as f:
        f.write(PLAN_YAML)
    from mountplan import api

    plan = api.load(f"{work}/plan.yaml")
    engine = Engine(state_dir=f"{work}/state")
    roots = {"r": f"{work}/root"}
    engine.apply(plan, roots)
    cli = [sys.executable, "-m", "mountplan", "plan", f"{work}/plan.yaml", "--root", f"r={work}/root",
           "--state-dir", f"{work}/state", "--detailed-exitcode", "-q"]

    def plan_in_process() -> None:
        assert not engine.plan(plan, roots).has_changes

    def plan_process() -> None:
        assert subprocess.run(cli, check=False, stdout=subprocess.DEVNULL).returncode == 0

    baseline = len(read_live_table(TableSource.MOUNTINFO))
    lines = [
        f"kernel {os.uname().release}, python {sys.version.split()[0]}, best/median of {repeat} (ms)",
        (
            f"{'mounts':>7} {'statmount':>13} {'mountinfo':>13} {'plan':>13} {'plan (cli)':>13} {'findmnt':>13}"
            f" {'plan us/m':>10} {'findmnt us/m':>13} {'mount us/m':>11}"
        ),
    ]
    made = 0
    for size in sizes:
        start, before = time.perf_counter(), made
        while made < size:
            name = f"m{made:06d}"
            os.mkdir(name, dir_fd=base)
            _mount_tmpfs(base, name, f"src {made}")
            made += 1
        mount_cost = (time.perf_counter() - start) / max(1, made - before)
        total = baseline + made
        assert len(read_live_table(TableSource.STATMOUNT)) == total
        stat = _best(lambda: read_live_table(TableSource.STATMOUNT), repeat)
        info = _best(lambda: read_live_table(TableSource.MOUNTINFO), repeat)
        find = _best(_findmnt, repeat)
        planned = _best(plan_in_process, repeat)
        planned_cli = _best(plan_process, repeat)

        def cell(t: tuple[float, float]) -> str:
            return f"{t[0] * 1e3:>6.1f}/{t[1] * 1e3:<6.1f}"

        lines.append(
            f"{total:>7} {cell(stat)} {cell(info)} {cell(planned)} {cell(planned_cli)} {cell(find)}"
            f" {planned[0] / total * 1e6:>10.1f} {find[0] / total * 1e6:>13.1f} {mount_cost * 1e6:>11.1f}"
        )
    engine.destroy(plan, roots)
    os.close(base)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,5000,10000", help="comma-separated table sizes")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    # run_in_sandbox: private mount (+pid, +user when unprivileged) namespace, gone afterwards.
    for line in run_in_sandbox(_bench, sizes, args.repeat, timeout=3600):
        print(line)


if __name__ == "__main__":
    main()
