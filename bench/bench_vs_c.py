"""In-process apply+destroy of plans/build-action.yaml through the API, next to a C loop doing the same mounts.

Issue 13 item 2. Inside a private mount namespace the script makes (as root it
re-executes under ``unshare -m --propagation private``, else it uses
mountplan.testing.run_in_sandbox), with the plan root on a private tmpfs, it times
side by side, in alternating rounds:

- ``mountplan.apply`` + ``mountplan.destroy`` with the state directory on a tmpfs;
- the same with the state directory on disk (``--disk-dir``, default /var/tmp);
- what-if rows: the engine with an fsync after every journal line and durable
  state-file writes (patched in for those rows only), on disk and on tmpfs;
- ``bench/c/build_action.c`` "exact": the kernel calls the engine makes against the
  root and the mounts, in its order, checking the ids it reads (see the C file);
- the same C file "minimal": mkdir, fsopen/fsconfig/fsmount or open_tree,
  move_mount, umount2, rmdir, with no checks;
- "Python loop, same calls" (``bench/_same_calls.py``): C exact's calls and checks
  in a plain Python loop through mountplan's ``_kernel`` wrappers, no engine: the
  language's floor for these calls.

The C file is compiled with ``cc -O2`` into a temporary directory at run time (the C
rows are skipped, with a message, when there is no compiler). Before timing, the
engine's backend calls for one apply+destroy are recorded and compared with the C
loop's trace and the Python loop's; the script stops if they differ.

    .venv/bin/python bench/bench_vs_c.py [--rounds 15] [--per-round 10] [--disk-dir /var/tmp] [--no-what-if] [--no-trace-check] [--phases] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _phases  # bench/ is sys.path[0] when a script runs
import _same_calls

import mountplan
from mountplan._kernel import (
    MountAttr,
    MoveMountFlag,
    OpenFlag,
    Resolve,
    UmountFlag,
    fsconfig_create,
    fsconfig_set_string,
    fsmount,
    fsopen,
    move_mount,
    openat2,
    umount_at,
)
from mountplan.engine import Engine, FaultInjector
from mountplan.engine import state as state_module
from mountplan.model import Plan
from mountplan.testing import is_privileged, run_in_sandbox

REPO = Path(__file__).resolve().parents[1]
PLAN_PATH = REPO / "plans" / "build-action.yaml"
C_SOURCE = REPO / "bench" / "c" / "build_action.c"
INNER = "MOUNTPLAN_BENCH_IN_NAMESPACE"
PYTHON_LOOP = "Python loop, same calls"


def _mount_tmpfs(where: str) -> None:
    """A private tmpfs on ``where`` (we are in our own mount namespace)."""
    with fsopen("tmpfs") as fs:
        fsconfig_set_string(fs.fileno(), "source", "bench-vs-c")
        fsconfig_create(fs.fileno())
        with fsmount(fs.fileno(), MountAttr(0)) as mnt, openat2(
            -100, where, OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC, Resolve(0)
        ) as target:
            move_mount(mnt.fileno(), "", target.fileno(), "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH)


def _unmount(path: str) -> None:
    parent = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        umount_at(parent, os.path.basename(path), UmountFlag.NOFOLLOW)
    finally:
        os.close(parent)


def _compile(out_dir: str) -> str | None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    exe = os.path.join(out_dir, "build_action")
    subprocess.run([cc, "-O2", "-o", exe, str(C_SOURCE)], check=True)
    return exe


def _engine_calls(plan: Plan, roots: dict[str, str], state_dir: str) -> list[str]:
    recorder = FaultInjector()
    engine = Engine(backend=recorder, state_dir=state_dir)
    engine.apply(plan, roots)
    recorder.calls.append("--destroy")
    engine.destroy(plan, roots)
    return recorder.calls


def _check_same_calls(exe: str, plan: Plan, root: str, state_dir: str) -> None:
    """Stop if the C loop's calls and the engine's backend calls differ."""
    engine = _engine_calls(plan, {"input": root}, state_dir)
    trace = subprocess.run([exe, "trace", root], check=True, capture_output=True, text=True).stdout.split()
    if engine != trace:
        raise SystemExit(f"bench/c/build_action.c no longer mirrors the engine:\nengine: {engine}\nC:      {trace}")
    python = _same_calls.trace(root)
    if engine != python:
        raise SystemExit(f"bench/_same_calls.py no longer mirrors the engine:\nengine: {engine}\nPython: {python}")


class _Fsyncs:
    """What-if: the engine with an fsync after every journal line and durable state-file writes.

    Patched in for one contender only, to show what the fsyncs the engine leaves out would cost.
    """

    def __enter__(self) -> None:
        store = state_module.StateStore
        self.saved = (store.journal_write, state_module.write_atomic)
        write_line = store.journal_write

        def journal_write(self: state_module.StateStore, entry: dict[str, object]) -> int:
            seq = write_line(self, entry)
            assert self._journal_fd is not None
            os.fsync(self._journal_fd)
            return seq

        def write_atomic(*args: object, **kwargs: object) -> None:
            kwargs["durable"] = True
            self.saved[1](*args, **kwargs)  # type: ignore[arg-type]

        store.journal_write = journal_write  # type: ignore[method-assign]
        state_module.write_atomic = write_atomic  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        state_module.StateStore.journal_write, state_module.write_atomic = self.saved  # type: ignore[method-assign]


def _time_engine(
    plan: Plan, roots: dict[str, str], state_dir: str, n: int, fsyncs: bool = False
) -> list[tuple[float, float]]:
    if fsyncs:
        with _Fsyncs():
            return _time_engine(plan, roots, state_dir, n)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        mountplan.apply(plan, roots, state_dir=state_dir)
        t1 = time.perf_counter()
        mountplan.destroy(plan, roots, state_dir=state_dir)
        t2 = time.perf_counter()
        out.append((t1 - t0, t2 - t1))
    return out


def _time_engine_cpu(
    plan: Plan, roots: dict[str, str], state_dir: str, n: int, fsyncs: bool = False
) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = _time_engine(plan, roots, state_dir, n, fsyncs)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return times, (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


def _time_python_loop(root: str, n: int) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """C exact's round in Python through the ``_kernel`` wrappers (bench/_same_calls.py), timed as the engine is."""
    loop = _same_calls.Loop(root)
    out = []
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            t0 = time.perf_counter()
            loop.apply()
            t1 = time.perf_counter()
            loop.destroy()
            t2 = time.perf_counter()
            out.append((t1 - t0, t2 - t1))
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        loop.close()
    return out, (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


def _time_c(exe: str, mode: str, root: str, n: int) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """The C loop times itself (clock_gettime around apply and destroy, getrusage around the loop):
    no exec or process start-up in its figures."""
    lines = subprocess.run([exe, mode, root, str(n)], check=True, capture_output=True, text=True).stdout.splitlines()
    _, user, system = lines.pop().split()
    times = [(int(a) / 1e9, int(d) / 1e9) for a, d in (line.split() for line in lines)]
    return times, (int(user) / 1e6, int(system) / 1e6)


def _bench(args: argparse.Namespace) -> str:
    out = io.StringIO()
    plan = mountplan.load(PLAN_PATH)
    base = tempfile.mkdtemp(prefix="mountplan-bench-vs-c-")
    _mount_tmpfs(base)
    disk = tempfile.mkdtemp(prefix="mountplan-bench-state-", dir=args.disk_dir)
    try:
        root = os.path.join(base, "input")
        os.makedirs(os.path.join(root, "toolchain", "bin"))
        Path(root, "toolchain", "bin", "cc").write_text("#!/bin/sh\n")
        roots = {"input": root}
        tmpfs_state = os.path.join(base, "state")
        disk_state = os.path.join(disk, "state")
        exe = _compile(base)
        if exe is None:
            out.write("no C compiler (cc, gcc, clang): the C rows are skipped\n")
        elif args.no_trace_check:
            out.write("trace check skipped (--no-trace-check): the C and Python loops mirror this checkout's engine\n")
        else:
            _check_same_calls(exe, plan, root, tmpfs_state)
        fs_of_disk = _fs_type(disk)
        rows: dict[str, list[tuple[float, float]]] = {}
        cpu: dict[str, list[float]] = {}
        on_disk = f"engine, state on {fs_of_disk} ({args.disk_dir})"
        contenders: list[tuple[str, Callable[[int], tuple[list[tuple[float, float]], tuple[float, float]]]]] = [
            ("engine, state on tmpfs", lambda n: _time_engine_cpu(plan, roots, tmpfs_state, n)),
            (on_disk, lambda n: _time_engine_cpu(plan, roots, disk_state, n)),
        ]
        if not args.no_what_if:
            contenders += [
                (f"what-if: {fs_of_disk} + fsync per journal line, state", lambda n: _time_engine_cpu(
                    plan, roots, disk_state, n, fsyncs=True)),
                ("what-if: tmpfs + fsync per journal line, state", lambda n: _time_engine_cpu(
                    plan, roots, tmpfs_state, n, fsyncs=True)),
            ]
        contenders.append((PYTHON_LOOP, lambda n: _time_python_loop(root, n)))
        if exe is not None:
            contenders += [
                ("C loop, exact syscalls", lambda n: _time_c(exe, "exact", root, n)),
                ("C loop, minimal", lambda n: _time_c(exe, "minimal", root, n)),
            ]
        out.write(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        for label, run in contenders:  # warm-up: caches, page cache, the plan's compiled steps
            run(2)
            rows[label] = []
            cpu[label] = [0.0, 0.0]
        for r in range(args.rounds):
            shift = r % len(contenders)  # alternate who goes first
            for label, run in contenders[shift:] + contenders[:shift]:
                times, (user, system) = run(args.per_round)
                rows[label] += times
                cpu[label][0] += user
                cpu[label][1] += system
        assert os.listdir(root) == ["toolchain"], os.listdir(root)

        n = args.rounds * args.per_round
        out.write(
            f"kernel {os.uname().release}, python {sys.version.split()[0]}, cpus {os.cpu_count()}, "
            f"{'root' if is_privileged() else 'unprivileged'}; plan build-action ({len(plan.mounts)} mounts), root on a "
            f"private tmpfs; {args.rounds} alternating rounds x {args.per_round} = {n} apply+destroy each\n"
        )
        med: dict[str, tuple[float, float, float]] = {}
        for label, times in rows.items():
            a = statistics.median(t[0] for t in times) * 1e3
            d = statistics.median(t[1] for t in times) * 1e3
            total = statistics.median(t[0] + t[1] for t in times) * 1e3
            low = min(t[0] + t[1] for t in times) * 1e3
            med[label] = (a, d, total)
            user, system = (c / len(times) * 1e3 for c in cpu[label])
            out.write(f"  {label:<48} apply {a:7.3f} ms  destroy {d:7.3f} ms  total {total:7.3f} ms  (min {low:7.3f})"
                      f"  cpu user {user:6.3f} sys {system:6.3f}\n")
        eng, eng_disk = (med[label][2] for label, _ in contenders[:2])
        out.write(f"  => engine, state on disk / on tmpfs: {eng_disk / eng:.2f}x\n")
        if not args.no_what_if:
            sync_disk, sync_tmpfs = (med[label][2] for label, _ in contenders[2:4])
            out.write(f"  => what-if fsyncs / engine on tmpfs: state on disk {sync_disk / eng:.2f}x, "
                      f"on tmpfs {sync_tmpfs / eng:.2f}x\n")
        engine_cpu = sum(cpu["engine, state on tmpfs"])
        python_cpu = sum(cpu[PYTHON_LOOP])
        out.write(f"  => engine (tmpfs) / Python loop: cpu (user+sys) {engine_cpu / python_cpu:.2f}x;  "
                  f"engine (state on disk) / Python loop: {sum(cpu[on_disk]) / python_cpu:.2f}x\n")
        if exe is not None:
            c_exact_cpu = sum(cpu["C loop, exact syscalls"])
            out.write(f"  => Python loop / C exact: cpu (user+sys) {python_cpu / c_exact_cpu:.2f}x;  "
                      f"engine (state on disk) / C exact: {sum(cpu[on_disk]) / c_exact_cpu:.2f}x\n")
            exact, minimal = med["C loop, exact syscalls"], med["C loop, minimal"]
            for label, base_row, key in (("C exact", exact, "C loop, exact syscalls"),
                                         ("C minimal", minimal, "C loop, minimal")):
                ratio = [med["engine, state on tmpfs"][i] / base_row[i] for i in range(3)]
                out.write(f"  => engine (tmpfs) / {label}: wall median apply {ratio[0]:.2f}x  destroy {ratio[1]:.2f}x  "
                          f"total {ratio[2]:.2f}x;  cpu (user+sys) {engine_cpu / sum(cpu[key]):.2f}x\n")
        if args.phases:
            _time_engine(plan, roots, tmpfs_state, 5)
            with _phases.timed_phases() as (seconds, calls):
                _time_engine(plan, roots, tmpfs_state, 100)
            out.write("engine (state on tmpfs), wall time by phase per apply+destroy (inclusive, nested; 100 runs):\n")
            out.write(_phases.report(seconds, calls, 100))
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            _time_engine(plan, roots, tmpfs_state, 50)
            prof.disable()
            text = io.StringIO()
            for key in ("tottime", "cumulative"):
                pstats.Stats(prof, stream=text).sort_stats(key).print_stats(35)
            out.write(text.getvalue())
    finally:
        _unmount(base)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    return out.getvalue()


def _fs_type(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mountinfo, longest prefix)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            sep = fields.index("-")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fields[sep + 1]
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds")
    parser.add_argument("--per-round", type=int, default=10, help="apply+destroy per contender per round")
    parser.add_argument("--disk-dir", default="/var/tmp", help="where the on-disk state directory goes")
    parser.add_argument("--no-what-if", action="store_true", help="leave out the what-if fsync rows")
    parser.add_argument("--no-trace-check", action="store_true",
                        help="time an engine whose calls differ from the loops' (an older mountplan on PYTHONPATH)")
    parser.add_argument("--phases", action="store_true", help="wall time of the engine's phases (bench/_phases.py)")
    parser.add_argument("--profile", action="store_true", help="cProfile 50 engine apply+destroy (state on tmpfs)")
    args = parser.parse_args()
    if os.environ.get(INNER) == "1":
        sys.stdout.write(_bench(args))
    elif is_privileged() and shutil.which("unshare"):
        env = {**os.environ, INNER: "1"}
        cmd = ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv]
        sys.exit(subprocess.run(cmd, env=env, check=False).returncode)
    else:
        sys.stdout.write(run_in_sandbox(_bench, args, timeout=3600))


if __name__ == "__main__":
    main()
