"""Apply+destroy of N tmpfs mounts: Engine vs a raw ctypes loop vs one mount(8)/umount(8) per mount.

Runs inside a private mount namespace it makes itself (re-exec under
``unshare -m --propagation private`` as root, else mountplan.testing.run_in_sandbox),
so nothing reaches the host's mount table. Prints median µs per mount.

    .venv/bin/python bench/bench_engine.py [--mounts 1000] [--runs 5] [--cli-mounts 200] [--profile] [--on-disk]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from mountplan import _kernel
from mountplan._kernel import (
    AtFlag,
    MountAttr,
    MoveMountFlag,
    OpenFlag,
    Propagation,
    Resolve,
    UmountFlag,
    fsconfig_create,
    fsconfig_set_string,
    fsmount,
    fsopen,
    mkdirat,
    move_mount,
    openat2,
    umount_at,
)
from mountplan.engine import Engine, FaultInjector
from mountplan.engine.executor import compiled_for, fingerprint
from mountplan.model import MountSpec, Option, Plan, RootSpec
from mountplan.testing import is_privileged, run_in_sandbox

INNER = "MOUNTPLAN_BENCH_IN_NAMESPACE"
BENEATH = Resolve.BENEATH | Resolve.NO_SYMLINKS | Resolve.NO_MAGICLINKS
_ANY = OpenFlag.PATH | OpenFlag.CLOEXEC | OpenFlag.NOFOLLOW


def plan_of(count: int) -> Plan:
    mounts = tuple(
        MountSpec(name=f"t{i:05d}", root="r", target=f"t{i:05d}", fs_type="tmpfs", source="bench", options=(Option("size", "1m"),))
        for i in range(count)
    )
    return Plan(name="bench", roots=(RootSpec("r"),), mounts=mounts)


def run_engine(root: str, count: int, state_dir: str) -> tuple[float, float]:
    plan = plan_of(count)
    engine = Engine(state_dir=state_dir)
    t0 = time.perf_counter()
    engine.apply(plan, {"r": root})
    t1 = time.perf_counter()
    engine.destroy(plan, {"r": root})
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def run_raw(root: str, count: int) -> tuple[float, float]:
    """The same kernel work the engine does for a tmpfs, minus journaling/state/propagation/statx:
    mkdirat, fsopen, fsconfig source and size, create, fsmount, openat2 target, move_mount; then
    umount and rmdir.
    """
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    names = [f"t{i:05d}" for i in range(count)]
    t0 = time.perf_counter()
    for name in names:
        mkdirat(rootfd, name, 0o755)
        with fsopen("tmpfs") as fs:
            fsconfig_set_string(fs.fileno(), "source", "bench")
            fsconfig_set_string(fs.fileno(), "size", "1m")
            fsconfig_create(fs.fileno())
            with fsmount(fs.fileno(), MountAttr(0)) as mnt, openat2(
                rootfd, name, OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC, BENEATH
            ) as target:
                move_mount(mnt.fileno(), "", target.fileno(), "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH)
    t1 = time.perf_counter()
    for name in reversed(names):
        umount_at(rootfd, name, UmountFlag.NOFOLLOW)
        os.rmdir(name, dir_fd=rootfd)
    t2 = time.perf_counter()
    os.close(rootfd)
    return t1 - t0, t2 - t1


class _Recorder:
    """Calls mountplan._kernel by name, recording each name (to check the loops' call sequences)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., object]:
        func = getattr(_kernel, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            self.calls.append(name)
            return func(*args, **kwargs)

        return wrapper


def run_same(root: str, count: int, k: object = _kernel) -> tuple[float, float]:
    """Exactly the kernel calls the engine makes through its backend, in the same order, in a plain loop.

    Apply, per mount: fsopen, fsconfig source and size, create, fsmount, openat2 probe of the
    target (None: absent), mkdirat, openat2 of the new directory, statx of the mount it lies on,
    statx of the detached mount's id, move_mount, openat2 + statx (landed beneath the root),
    mount_setattr (propagation). Destroy: statx of the mount id at the target, umount, statx
    again (ours gone), rmdir. ``check_same_calls`` verifies this is what the engine calls.
    """
    kk: Any = k
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    names = [f"t{i:05d}" for i in range(count)]
    t0 = time.perf_counter()
    for name in names:
        with kk.fsopen("tmpfs") as fs:
            kk.fsconfig_set_string(fs.fileno(), "source", "bench")
            kk.fsconfig_set_string(fs.fileno(), "size", "1m")
            kk.fsconfig_create(fs.fileno())
            mnt = kk.fsmount(fs.fileno(), MountAttr(0))
        with mnt:
            if (found := kk.openat2_if_exists(rootfd, name, _ANY, BENEATH)) is not None:
                found.close()
            kk.mkdirat(rootfd, name, 0o755)
            with kk.openat2(rootfd, name, _ANY, BENEATH) as target:
                kk.statx_mount_ids(target.fileno())  # the mount the target lies on (shared?)
                kk.statx_mount_ids(mnt.fileno())  # our id, journaled before attaching
                kk.move_mount(mnt.fileno(), "", target.fileno(), "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH)
            with kk.openat2(rootfd, name, _ANY, BENEATH) as check:  # landed beneath the root?
                kk.statx_mount_ids(check.fileno())
            kk.mount_setattr(mnt.fileno(), "", AtFlag.EMPTY_PATH, propagation=Propagation.PRIVATE)
    t1 = time.perf_counter()
    for name in reversed(names):
        kk.statx_mount_ids(rootfd, name, AtFlag.SYMLINK_NOFOLLOW)
        kk.umount_at(rootfd, name, UmountFlag.NOFOLLOW)
        kk.statx_mount_ids(rootfd, name, AtFlag.SYMLINK_NOFOLLOW)  # ours gone, not a stacked one
        os.rmdir(name, dir_fd=rootfd)
    t2 = time.perf_counter()
    os.close(rootfd)
    return t1 - t0, t2 - t1


def check_same_calls(root: str, state_dir: str) -> None:
    """Fail loudly if the engine's backend calls and run_same's differ (for 3 mounts)."""
    recorder = FaultInjector()
    engine = Engine(backend=recorder, state_dir=state_dir)
    engine.apply(plan_of(3), {"r": root})
    engine.destroy(plan_of(3), {"r": root})
    mine = _Recorder()
    run_same(root, 3, mine)
    if recorder.calls != mine.calls:
        raise SystemExit(f"run_same no longer mirrors the engine:\nengine: {recorder.calls}\nloop:   {mine.calls}")


def run_cli(root: str, count: int) -> tuple[float, float]:
    """One mount(8) and one umount(8) process per mount (mkdir/rmdir in-process)."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    assert mount and umount
    targets = [os.path.join(root, f"t{i:05d}") for i in range(count)]
    t0 = time.perf_counter()
    for target in targets:
        os.mkdir(target)
        subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m", "bench", target], check=True)
    t1 = time.perf_counter()
    for target in reversed(targets):
        subprocess.run([umount, target], check=True)
        os.rmdir(target)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def median_runs(func: Callable[[], tuple[float, float]], runs: int) -> tuple[float, float]:
    results = [func() for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def bench(args: argparse.Namespace) -> str:
    out = io.StringIO()
    base = tempfile.mkdtemp(prefix="mountplan-bench-")
    if not args.on_disk:
        # We are in a private namespace: a tmpfs under the work directory keeps
        # disk metadata latency (mkdir on ext4 costs 150-250 µs on this VM, and
        # varies a lot) out of both loops, so the ratio shows mountplan's own cost.
        with fsopen("tmpfs") as fs:
            fsconfig_set_string(fs.fileno(), "source", "bench-work")
            fsconfig_create(fs.fileno())
            with fsmount(fs.fileno(), MountAttr(0)) as mnt, openat2(
                -100, base, OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC, Resolve(0)
            ) as where:
                move_mount(mnt.fileno(), "", where.fileno(), "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH)
    root = os.path.join(base, "root")
    os.mkdir(root)
    n = args.mounts
    try:
        check_same_calls(root, os.path.join(base, "state"))
        # The engine keeps the compiled steps (and fingerprints) of plans it has
        # seen; a never-seen plan is timed separately, with both caches emptied.
        def run_cold() -> tuple[float, float]:
            compiled_for.cache_clear()
            fingerprint.cache_clear()
            return run_engine(root, n, os.path.join(base, "state"))

        cold = median_runs(run_cold, args.runs)
        eng = median_runs(lambda: run_engine(root, n, os.path.join(base, "state")), args.runs)
        same = median_runs(lambda: run_same(root, n), args.runs)
        raw = median_runs(lambda: run_raw(root, n), args.runs)
        cli = median_runs(lambda: run_cli(root, args.cli_mounts), max(1, args.runs // 2))
        assert os.listdir(root) == []

        def row(label: str, times: tuple[float, float], count: int) -> None:
            a, d = (t / count * 1e6 for t in times)
            out.write(f"{label:<34} apply {a:8.1f} µs/mount  destroy {d:8.1f} µs/mount  total {a + d:8.1f}\n")

        where = "on disk (" + base + ")" if args.on_disk else "on a tmpfs"
        out.write(f"{n} tmpfs mounts beneath a root {where}, median of {args.runs} runs, cpus={os.cpu_count()}\n")
        row("Engine, first apply of a plan", cold, n)
        row("Engine (journal, state, checks)", eng, n)
        row("same syscalls, plain loop", same, n)
        row("minimal loop (no ids, no propagation)", raw, n)
        row(f"mount(8)/umount(8) x{args.cli_mounts} (extrap.)", cli, args.cli_mounts)
        for label, times, base_times in (
            ("engine / same-syscalls loop", eng, same),
            ("engine / minimal loop", eng, raw),
            ("first apply / same-syscalls loop", cold, same),
        ):
            ratio = (times[0] + times[1]) / (base_times[0] + base_times[1])
            out.write(
                f"{label}: apply {times[0] / base_times[0]:.2f}x  destroy {times[1] / base_times[1]:.2f}x"
                f"  total {ratio:.2f}x\n"
            )
        out.write(f"mount(8)/engine total: {((cli[0] + cli[1]) / args.cli_mounts) / ((eng[0] + eng[1]) / n):.1f}x\n")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run_engine(root, n, os.path.join(base, "state"))
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
            out.write(text.getvalue())
    finally:
        if not args.on_disk:
            parent = os.open(os.path.dirname(base), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            umount_at(parent, os.path.basename(base), UmountFlag.NOFOLLOW)
            os.close(parent)
        shutil.rmtree(base, ignore_errors=True)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mounts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cli-mounts", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="cProfile one engine apply+destroy")
    parser.add_argument("--on-disk", action="store_true", help="put the root in $TMPDIR, not on a private tmpfs")
    args = parser.parse_args()
    if os.environ.get(INNER) == "1":
        sys.stdout.write(bench(args))
    elif is_privileged() and shutil.which("unshare"):
        env = {**os.environ, INNER: "1"}
        cmd = ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv]
        sys.exit(subprocess.run(cmd, env=env, check=False).returncode)
    else:
        sys.stdout.write(run_in_sandbox(bench, args))


if __name__ == "__main__":
    main()
