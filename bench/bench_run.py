"""Issue 13 speed items, side by side in one run: each ratio from alternating runs on the same machine.

    .venv/bin/python bench/bench_run.py [-n 15] [--before REV] [--api 40] [--sizes 1000,5000,10000]

Everything happens in a private mount namespace the script makes (root:
``unshare -m --propagation private``), on a private tmpfs: the plan's root, the
state dir, the validated-plan cache and the bytecode cache (``PYTHONPYCACHEPREFIX``;
this environment sets PYTHONDONTWRITEBYTECODE, which an installed package would
not have). /tmp and /run are ext4 on this VM, so nothing is measured there.

1. ``mountplan run --unshare -- /bin/true`` for plans/build-action.yaml as a process,
   next to bwrap making the same mounts beneath the root (``--bind / /``, so /bin/true
   is the host's, as with mountplan without --chroot) and to a shell script of
   unshare + mount(8), each once with every namespace new (mountplan's --unshare) and
   once with only mount and pid (``--share net,ipc,uts,cgroup``). mountplan runs as
   ``pip install`` gives it (the console script of a wheel installed into a venv on
   the tmpfs) and as ``python -m mountplan`` from the editable development venv.
   ``before`` is today's tree with this work's files (OWN_FILES) taken back to
   ``--before``, run the same way; ``no cache`` is today's tree with the
   validated-plan cache off.
4. In-process apply+destroy of the same plan through the API with 0 and with 10,000
   unrelated tmpfs mounts in the namespace (beside the roots, on another tmpfs),
   alternating rounds (the engine reads only the mounts beneath the roots).
5. ``mountplan plan`` as a process (wheel install and editable) against
   1k/5k/10k-mount tables, next to ``findmnt --json`` on the same table.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "plans" / "build-action.yaml"
MARKER = "MOUNTPLAN_BENCH_RUN_IN_NAMESPACE"
BASE = "/tmp/bench_run"  # a private tmpfs is mounted here inside the namespace
DEFAULT_BEFORE = "ad027bc"  # main before the third round of issue 13 start-up work
#: The files that round changed (item 1's "before" takes them back). The second round's
#: (from 477b63f) were __main__, _log, cli/logs, cli/__init__, cli/_schema_cmd, runner,
#: _kernel/_libc, _kernel/namespaces, engine/executor, engine/apply_run, engine/statefs,
#: loader/diagnostics, serve and watch.
OWN_FILES = (
    "mountplan/cli/__init__.py",
    "mountplan/cli/_output.py",
    "mountplan/cli/logs.py",
    "mountplan/engine/__init__.py",
    "mountplan/engine/executor.py",
    "mountplan/engine/apply_run.py",
    "mountplan/engine/attach.py",
    "mountplan/engine/preflight.py",
    "mountplan/engine/recovery.py",
    "mountplan/engine/destroy.py",
)



def _sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


def _timed_process(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user+sys of the child and its children) seconds of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, cwd=BASE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _med(values: list[float]) -> float:
    return statistics.median(values) * 1000


def _row(label: str, walls: list[float], cpus: list[float], floor: float | None) -> str:
    ratio = f"{_med(walls) / floor:6.2f}x" if floor else "       "
    return f"  {label:<46} wall median {_med(walls):8.1f} ms  min {min(walls) * 1000:7.1f}  cpu {_med(cpus):7.1f} ms  {ratio}"


#: A case is a process to start (argv, env) or a callable that times itself (wall, cpu).
Case = tuple[list[str], dict[str, str]] | Callable[[], tuple[float, float]]


def _measure(case: Case) -> tuple[float, float]:
    return case() if callable(case) else _timed_process(*case)


def _alternate(cases: Mapping[str, Case], n: int) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
    # Warm-up: page cache, bytecode, plan cache. cwd is the tmpfs, never the checkout:
    # `python -m` puts the cwd first on sys.path, which would shadow PYTHONPATH.
    for case in cases.values():
        _measure(case)
    for _ in range(n):
        for label, case in cases.items():
            wall, cpu = _measure(case)
            results[label][0].append(wall)
            results[label][1].append(cpu)
    return results


class _ServedAction:
    """One action through a long-lived ``mountplan serve`` (item 3's worker mode), timed as a worker sees it.

    Per call, ``whole=None``: an ``apply`` request carrying the root fd, /bin/true
    started with posix_spawn once the reply says the mounts are there, its exit, a
    ``destroy`` request and its reply (no new namespaces). ``whole`` set (``unshare``: True
    or a list of namespace names): one ``run`` request, the sandbox ``mountplan run --unshare``
    makes, from a child the server forks. The server starts once, outside the timing;
    its state dir is on the tmpfs. CPU is the client's (this process and /bin/true)
    plus the server's (its threads' schedstat, in ns) and its reaped children's
    (clock ticks).
    """

    def __init__(self, mountplan: list[str], root: str, env: dict[str, str],
                 whole: bool | list[str] | None = None) -> None:
        from _serve_client import ServeClient, start_server  # bench/ is sys.path[0] when a script runs

        self.whole = whole
        sock = f"{BASE}/serve-{os.path.basename(root)}.sock"
        self.server = start_server(mountplan, sock, str(PLAN), f"{BASE}/serve-state-{id(self)}", cwd=BASE, env=env)
        self.client = ServeClient(sock)
        self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def _server_cpu(self) -> float:
        """The server's CPU seconds: its threads' (schedstat, ns) and its reaped children's (clock ticks)."""
        total = 0.0
        for task in os.listdir(f"/proc/{self.server.pid}/task"):
            with open(f"/proc/{self.server.pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0]) / 1e9
        with open(f"/proc/{self.server.pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return total + (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime

    def __call__(self) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = self._server_cpu()
        start = time.perf_counter()
        if self.whole is not None:
            reply = self.client.call({"format_version": 1, "op": "run", "roots": {"input": 0}, "argv": ["/bin/true"],
                                      "unshare": self.whole}, [self.fd])
            assert reply["status"] == 0, reply
        else:
            action = self.client.apply(self.fd)
            pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
            os.waitpid(pid, 0)
            self.client.destroy(action)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = sum((a.ru_utime - b.ru_utime) + (a.ru_stime - b.ru_stime) for a, b in zip(after, before))
        return wall, cpu + self._server_cpu() - server_before

    def close(self) -> None:
        self.client.close()
        os.close(self.fd)
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(30)


def _input_root(path: str) -> str:
    os.makedirs(f"{path}/toolchain/bin")
    Path(path, "toolchain", "bin", "cc").write_text("#!/bin/sh\n")
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", MARKER)}
    env["PYTHONPYCACHEPREFIX"] = f"{BASE}/pycache"
    env.update(extra)
    return env


# ------------------------------------------------------------------ item 1


@functools.cache
def _wheel_venv() -> str | None:
    """A venv on the tmpfs with mountplan installed from a wheel of this tree, as ``pip install`` gives users.

    The development venv is an editable install: its ``.pth`` finder is imported by
    ``site`` in every process. None (and a note) when the wheel or venv cannot be made.
    """
    venv = f"{BASE}/wheel-venv"
    dist = f"{BASE}/dist"
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, str(REPO)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        wheels = [str(p) for p in Path(dist).glob("mountplan-*.whl")]
        subprocess.run([f"{venv}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *wheels],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        print(f"  (no wheel-installed mountplan: {exc})", flush=True)
        return None
    return venv


def _bench_run(n: int, before: str) -> list[str]:
    root = _input_root(f"{BASE}/input")
    state = f"{BASE}/state"
    old_tree = f"{BASE}/before"
    os.makedirs(old_tree)
    # Today's tree with only this work's files taken back to ``before``: what the
    # other changes since then cost or save stays out of the comparison.
    _sh(f"git -C {REPO} archive HEAD mountplan plans | tar -x -C {old_tree}")
    for rel in OWN_FILES:
        _sh(f"git -C {REPO} show {before}:{rel} > {old_tree}/{rel}")
    common = ["run", str(PLAN), "--root", f"input={root}", "--state-dir", state, "-q"]
    # --unshare makes net, ipc, uts and cgroup namespaces too; "pid+mnt" shares them
    # (what --unshare meant before), next to bwrap and the script that unshare the same.
    all_ns = [*common, "--unshare", "--", "/bin/true"]
    mnt_pid = [*common, "--unshare", "--share", "net,ipc,uts,cgroup", "--", "/bin/true"]
    py = sys.executable
    env_now = _env(MOUNTPLAN_PLAN_CACHE=f"{BASE}/plan-cache")
    wheel = _wheel_venv()
    bwrap = shutil.which("bwrap")
    # label -> (the case, the baseline its ratio is taken against)
    cases: dict[str, tuple[Case, str]] = {}
    if wheel:
        cases["mountplan run --unshare (wheel, all ns)"] = (([f"{wheel}/bin/mountplan", *all_ns], env_now), "all")
        cases["mountplan run --unshare (wheel, pid+mnt)"] = (([f"{wheel}/bin/mountplan", *mnt_pid], env_now), "pid")
    cases.update({
        "mountplan run --unshare (editable, all ns)": (([py, "-m", "mountplan", *all_ns], env_now), "all"),
        "mountplan run --unshare (editable, pid+mnt)": (([py, "-m", "mountplan", *mnt_pid], env_now), "pid"),
        "  same, no plan cache": (([py, "-m", "mountplan", *mnt_pid], _env(MOUNTPLAN_PLAN_CACHE="off")), "pid"),
        f"  same, before ({before}, pid+mnt)": (
            ([py, "-m", "mountplan", *common, "--unshare", "--", "/bin/true"], _env(PYTHONPATH=old_tree)), "pid"),
        "python -S -c pass (interpreter floor)": (([py, "-S", "-c", "pass"], env_now), "pid"),
        "python -c pass (editable venv, site)": (([py, "-c", "pass"], env_now), "pid"),
    })
    if wheel:
        # The floor of any console script: pip's wrapper imports re before calling mountplan,
        # and Python 3.11 reaches fsopen/fsmount/move_mount/openat2 only through ctypes.
        wheel_py = f"{wheel}/bin/python"
        cases["python -c pass (wheel venv, site)"] = (([wheel_py, "-c", "pass"], env_now), "pid")
        cases["  + import re (pip's console-script wrapper)"] = (([wheel_py, "-c", "import re"], env_now), "pid")
        cases["  + import re, ctypes (the syscalls' route)"] = (([wheel_py, "-c", "import re, ctypes"], env_now), "pid")
    # The worker mode: one long-lived process, a request per action. Its children's CPU is counted
    # in clock ticks (10 ms), so its rows print the mean CPU per action, not the median.
    server_cmd = [f"{wheel}/bin/mountplan"] if wheel else [py, "-m", "mountplan"]
    served = {
        "mountplan serve: run request (all ns)": (
            _ServedAction(server_cmd, _input_root(f"{BASE}/serve-all"), env_now, whole=True), "all"),
        "mountplan serve: run request (pid+mnt)": (
            _ServedAction(server_cmd, _input_root(f"{BASE}/serve-pid"), env_now, whole=[]), "pid"),
        "mountplan serve: apply, true, destroy (no ns)": (
            _ServedAction(server_cmd, _input_root(f"{BASE}/serve-apply"), env_now), "pid"),
    }
    cases.update(served)
    script = (
        f"set -e; R={root}; mount -t proc -o nosuid,nodev,noexec proc $R/proc 2>/dev/null || "
        "{ mkdir -p $R/proc; mount -t proc -o nosuid,nodev,noexec proc $R/proc; }; "
        "mkdir -p $R/sys $R/dev $R/tmp $R/opt/tools; "
        "mount -t sysfs -o ro,nosuid,nodev,noexec sysfs $R/sys; "
        "mount -t tmpfs -o size=64k,mode=0755,nosuid,nodev,noexec dev $R/dev; "
        "for d in null zero full random urandom tty; do : > $R/dev/$d; mount --bind /dev/$d $R/dev/$d; "
        "mount -o remount,bind,nosuid,noexec $R/dev/$d; done; "
        "mount -t tmpfs -o size=256M,mode=1777,nosuid,nodev tmp $R/tmp; "
        "mount --bind $R/toolchain $R/opt/tools; mount -o remount,bind,ro,nosuid,nodev $R/opt/tools; /bin/true"
    )
    cases["shell: unshare -mp + mount(8)"] = (
        (["unshare", "-m", "-p", "-f", "--propagation", "private", "sh", "-c", script], env_now), "pid")
    cases["shell: unshare -mpniuC + mount(8)"] = (
        (["unshare", "-m", "-p", "-n", "-i", "-u", "-C", "-f", "--propagation", "private", "sh", "-c", script],
         env_now), "all")
    if bwrap:
        mounts = ["--bind", "/", "/", "--proc", f"{root}/proc", "--ro-bind", "/sys", f"{root}/sys",
                  "--dev", f"{root}/dev", "--tmpfs", f"{root}/tmp", "--ro-bind", f"{root}/toolchain",
                  f"{root}/opt/tools"]
        cases["bwrap --unshare-pid, same mounts"] = (([bwrap, "--unshare-pid", *mounts, "/bin/true"], env_now), "pid")
        # --unshare-all without the user namespace (root needs none, and mountplan makes none as root).
        cases["bwrap --unshare-pid/net/ipc/uts/cgroup"] = (
            ([bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
              *mounts, "/bin/true"], env_now), "all")
    try:
        res = _alternate({k: case for k, (case, _) in cases.items()}, n)
    finally:
        for action, _ in served.values():
            action.close()
    for label in served:
        res[label] = (res[label][0], [statistics.mean(res[label][1])])
    floors = {"pid": "bwrap --unshare-pid, same mounts", "all": "bwrap --unshare-pid/net/ipc/uts/cgroup"}
    title = f"1. whole process, plans/build-action.yaml (11 mounts), {n} alternating rounds"
    lines = [f"{title}; ratio = wall / bwrap unsharing the same namespaces"]
    for label, (walls, cpus) in res.items():
        floor = _med(res[floors[cases[label][1]]][0]) if bwrap else None
        lines.append(_row(label, walls, cpus, floor))
    shell = _med(res["shell: unshare -mp + mount(8)"][0])
    shell_all = _med(res["shell: unshare -mpniuC + mount(8)"][0])
    for kind in ("wheel", "editable"):
        if f"mountplan run --unshare ({kind}, pid+mnt)" in res:
            now = _med(res[f"mountplan run --unshare ({kind}, pid+mnt)"][0])
            now_all = _med(res[f"mountplan run --unshare ({kind}, all ns)"][0])
            lines.append(f"  => {kind}: / shell script {now / shell:.2f}x (pid+mnt), {now_all / shell_all:.2f}x (all ns)")
    before_ms = _med(res[f"  same, before ({before}, pid+mnt)"][0])
    lines.append(f"  => before / now (editable, pid+mnt): {before_ms / _med(res['mountplan run --unshare (editable, pid+mnt)'][0]):.1f}x")
    return lines


# ------------------------------------------------------------------ items 4 and 5


def _make_mounts(parent: str, count: int, start: int = 0, *, new_tmpfs: bool = True) -> None:
    from mountplan._kernel import (
        MoveMountFlag,
        OpenFlag,
        Resolve,
        fsconfig_create,
        fsmount,
        fsopen,
        move_mount,
        openat2,
    )

    os.makedirs(parent, exist_ok=True)
    if new_tmpfs:
        _sh(f"mount -t tmpfs busy {parent}")
    base = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    flags = OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC
    try:
        for i in range(start, count):
            name = f"m{i:05d}"
            os.mkdir(name, dir_fd=base)
            with fsopen("tmpfs") as fs:
                fsconfig_create(fs.fileno())
                with fsmount(fs.fileno()) as mnt, openat2(base, name, flags, Resolve.BENEATH) as target:
                    move_mount(mnt.fileno(), "", target.fileno(), "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH)
    finally:
        os.close(base)


def _drop_mounts(parent: str) -> None:
    _sh(f"umount -l {parent}")


def _bench_api(iterations: int, rounds: int, busy: int) -> list[str]:
    import mountplan
    from mountplan.engine import Engine
    from mountplan.livetable import read_live_table

    plan = mountplan.load(PLAN)
    # The action's tree on its own tmpfs, the busy mounts on another: "unrelated"
    # mounts. (Beside the root on the same mount they are in the holder's subtree,
    # and reading beneath the root costs that subtree: see docs/performance.md.)
    os.makedirs(f"{BASE}/api")
    _sh(f"mount -t tmpfs api {BASE}/api")
    root = _input_root(f"{BASE}/api/input")
    roots = {"input": root}
    engine = Engine(state_dir=f"{BASE}/api-state")
    busy_dir = f"{BASE}/busy"

    def per_action() -> float:
        start = time.perf_counter()
        engine.apply(plan, roots)
        engine.destroy(plan, roots)
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label_mounts, count in (("0 other mounts", 0), (f"{busy} other mounts", busy)):
            if count:
                _make_mounts(busy_dir, count)
            per_action()  # warm
            samples.setdefault(f"engine as is, {label_mounts}", []).extend(per_action() for _ in range(iterations))
            if count:
                samples.setdefault("read_live_table() full", []).append(min(_time(read_live_table) for _ in range(3)))
                samples.setdefault("read_live_table(beneath=[root])", []).append(
                    min(_time(lambda: read_live_table(beneath=[root])) for _ in range(3))
                )
                # A root beside the 10k mounts, in a directory of the same tmpfs.
                os.mkdir(f"{busy_dir}/beside")
                samples.setdefault("read_live_table(beneath=[root beside the 10k])", []).append(
                    min(_time(lambda: read_live_table(beneath=[f"{BASE}/busy/beside"])) for _ in range(3))
                )
                _drop_mounts(busy_dir)
    title = f"4. in-process apply+destroy of build-action via the API, state on tmpfs, {rounds} alternating rounds"
    lines = [f"{title} x {iterations}"]
    for label, values in samples.items():
        lines.append(f"  {label:<52} median {_med(values):8.2f} ms  min {min(values) * 1000:8.2f} ms")
    for kind in ("engine as is",):
        ratio = _med(samples[f"{kind}, {busy} other mounts"]) / _med(samples[f"{kind}, 0 other mounts"])
        lines.append(f"  => {kind}: {busy} other mounts / none = {ratio:.2f}x")
    return lines


def _time(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def _bench_plan(sizes: list[int], n: int) -> list[str]:
    root = f"{BASE}/plan-input"
    _input_root(root)
    state = f"{BASE}/plan-state"
    py = sys.executable
    env = _env(MOUNTPLAN_PLAN_CACHE=f"{BASE}/plan-cache")
    common = [str(PLAN), "--root", f"input={root}", "--state-dir", state, "-q"]
    subprocess.run([py, "-m", "mountplan", "apply", *common], check=True, env=env, stdout=subprocess.DEVNULL, cwd=BASE)
    busy_dir = f"{BASE}/plan-busy"
    wheel = _wheel_venv()
    lines = [f"5. `mountplan plan` process (build-action applied, no changes) vs `findmnt --json`, {n} alternating rounds"]
    made = 0
    os.makedirs(busy_dir)
    _sh(f"mount -t tmpfs busy {busy_dir}")
    for size in sizes:
        _make_mounts(busy_dir, size, made, new_tmpfs=False)
        made = size
        with open("/proc/self/mountinfo", "rb") as f:
            total = len(f.read().splitlines())
        cases = {
            **({"mountplan plan (wheel)": ([f"{wheel}/bin/mountplan", "plan", *common], env)} if wheel else {}),
            "mountplan plan": ([py, "-m", "mountplan", "plan", *common], env),
            "findmnt --json": (["findmnt", "--json"], env),
        }
        res = _alternate(cases, n)
        floor = _med(res["findmnt --json"][0])
        lines.append(f"  table of {total} mounts (ratio = wall / findmnt --json)")
        lines += [_row(k, *v, floor) for k, v in res.items()]
    return lines


def _bench(args: argparse.Namespace) -> None:
    os.makedirs(BASE, exist_ok=True)
    _sh(f"mount -t tmpfs -o mode=0755 bench {BASE}")
    print(f"kernel {os.uname().release}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"all files on a private tmpfs at {BASE} (private mount namespace)", flush=True)
    if not args.skip_run:
        print("\n".join(_bench_run(args.n, args.before)), flush=True)
    if not args.skip_api:
        print("\n".join(_bench_api(args.api, args.rounds, args.busy)), flush=True)
    if not args.skip_plan:
        print("\n".join(_bench_plan(sorted(int(s) for s in args.sizes.split(",")), args.plan_n)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=15, help="alternating rounds of the process comparison (item 1)")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision to compare `mountplan run` with")
    parser.add_argument("--api", type=int, default=30, help="apply+destroy per round (item 4)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of 0 / --busy mounts (item 4)")
    parser.add_argument("--busy", type=int, default=10000, help="unrelated mounts (item 4)")
    parser.add_argument("--sizes", default="1000,5000,10000", help="table sizes for item 5")
    parser.add_argument("--plan-n", type=int, default=5, help="alternating rounds per size (item 5)")
    parser.add_argument("--skip-run", action="store_true")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-plan", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_run: run as root (it makes a private mount namespace with unshare(1))")
    if os.environ.get(MARKER) is None:
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("bench_run: needs unshare(1)")
        os.execve(unshare, [unshare, "-m", "--propagation", "private", sys.executable, *sys.argv],
                  {**os.environ, MARKER: "1"})
    _bench(args)


if __name__ == "__main__":
    main()
