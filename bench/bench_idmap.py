"""What an idmapped bind costs next to a plain one, measured side by side in one run.

    .venv/bin/python bench/bench_idmap.py [-n 15] [--mounts 50]

Inside throwaway namespaces (mountplan.testing.run_in_sandbox; works as root and
unprivileged), on a tmpfs the script mounts itself: a plan of ``--mounts`` binds of
one tmpfs, plain and idmapped (``uids: [[1, 0, 1]]``), applied and destroyed in
alternating rounds through the API; then the parts an idmapped bind adds, one at a
time: making its user namespace (fork + unshare + map writes + open + reap) and
the mount_setattr that sets the mapping on a detached clone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from mountplan import _kernel
from mountplan._kernel import AtFlag, MountAttr, MoveMountFlag, OpenTreeFlag
from mountplan.engine import Engine
from mountplan.model import BindSource, IdMapping, IdRange, MountSpec, Plan, RootSpec, SourceRef
from mountplan.testing import run_in_sandbox

_AT_FDCWD = -100


def _plan(count: int, idmap: IdMapping | None) -> Plan:
    mounts = [MountSpec(name="data", root="r", target="data", fs_type="tmpfs", source="data")]
    for i in range(count):
        bind = BindSource(SourceRef("data", "r"), recursive=False, idmap=idmap)
        mounts.append(MountSpec(name=f"b{i:04d}", root="r", target=f"b{i:04d}", bind=bind))
    return Plan(name="bench-idmap" if idmap else "bench-plain", roots=(RootSpec("r"),), mounts=tuple(mounts))


def _bench(rounds: int, count: int) -> dict[str, list[float]]:
    base = tempfile.mkdtemp(prefix="bench_idmap.")
    fs = _kernel.fsopen("tmpfs")
    _kernel.fsconfig_create(fs.fileno())
    mnt = _kernel.fsmount(fs.fileno())
    _kernel.move_mount(mnt.fileno(), "", _AT_FDCWD, base, MoveMountFlag.F_EMPTY_PATH)
    os.mkdir(f"{base}/root")
    os.mkdir(f"{base}/state")
    engine = Engine(state_dir=f"{base}/state")
    ranges = (IdRange(1, 0, 1),)
    plans = {"plain": _plan(count, None), "idmapped": _plan(count, IdMapping(ranges, ranges))}
    times: dict[str, list[float]] = {"plain": [], "idmapped": [], "make_userns": [], "mount_setattr_idmap": []}
    for _ in range(rounds):
        for kind, plan in plans.items():
            start = time.perf_counter()
            engine.apply(plan, {"r": f"{base}/root"})
            engine.destroy(plan, {"r": f"{base}/root"})
            times[kind].append((time.perf_counter() - start) / count)
    engine.apply(plans["plain"], {"r": f"{base}/root"})  # a tmpfs at root/data to clone
    for _ in range(rounds * 10):
        start = time.perf_counter()
        userns = _kernel.make_userns("1 0 1\n", "1 0 1\n")
        times["make_userns"].append(time.perf_counter() - start)
        clone = _kernel.open_tree(_AT_FDCWD, f"{base}/root/data", OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC)
        start = time.perf_counter()
        _kernel.mount_setattr(clone.fileno(), "", AtFlag.EMPTY_PATH, MountAttr.IDMAP, userns_fd=userns.fileno())
        times["mount_setattr_idmap"].append(time.perf_counter() - start)
        clone.close()
        userns.close()
    engine.destroy(plans["plain"], {"r": f"{base}/root"})
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--mounts", type=int, default=50, help="binds per plan (default 50)")
    args = parser.parse_args()
    times = run_in_sandbox(_bench, args.n, args.mounts)
    print(f"{args.n} rounds, {args.mounts} binds of one tmpfs per plan, uid {os.geteuid()}, kernel {os.uname().release}")
    for kind in ("plain", "idmapped"):
        print(f"apply+destroy per bind, {kind:<9}  median {statistics.median(times[kind]) * 1e6:8.0f} µs")
    ratio = statistics.median(times["idmapped"]) / statistics.median(times["plain"])
    print(f"idmapped / plain                      {ratio:8.2f}x")
    for part in ("make_userns", "mount_setattr_idmap"):
        print(f"{part:<24} median {statistics.median(times[part]) * 1e6:8.0f} µs  (n={len(times[part])})")


if __name__ == "__main__":
    main()
