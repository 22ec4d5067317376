"""What planned objects cost, side by side in one run: apply+destroy in process, alternating rounds.

    .venv/bin/python bench/bench_objects.py [-n 40] [--count 100]

1. plans/build-action.yaml with its minimal /dev (``devices:``: 9 mounts and 5
   symlinks there) next to the same plan with the /dev it had before (a tmpfs and
   six node binds, written out as mounts): what the fuller /dev adds per action.
2. ``--count`` symlinks, ``--count`` directories and ``--count`` tmpfs mounts in one
   root, each as its own plan: an object next to a mount.

Runs in a private mount namespace it makes (root: ``unshare -m --propagation
private``; otherwise mountplan.testing.run_in_sandbox), on a private tmpfs for
roots and state when root. Nothing reaches the host.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mountplan
from mountplan import loader
from mountplan.engine import Engine
from mountplan.model import MountSpec, ObjectKind, ObjectSpec, Plan, RootSpec
from mountplan.testing import is_privileged, run_in_sandbox

REPO = Path(__file__).resolve().parents[1]
MARKER = "MOUNTPLAN_BENCH_OBJECTS_IN_NAMESPACE"

#: build-action's /dev before issue 13 item 11: a tmpfs and six file binds of host nodes.
OLD_DEV = "".join(
    f"""  - name: dev-{node}
    target: dev/{node}
    bind: {{path: /dev/{node}, recursive: false}}
    attrs: [nosuid, noexec]
    inherit_attrs: false
    mountpoint: {{kind: file, mode: "0666"}}
"""
    for node in ("null", "zero", "full", "random", "urandom", "tty")
)


def _old_build_action() -> Plan:
    text = (REPO / "plans" / "build-action.yaml").read_text()
    text = text[: text.index("devices:")]
    text += """  - name: dev
    target: dev
    type: tmpfs
    source: dev
    options: {size: 64k, mode: "0755"}
    attrs: [noexec]
""" + OLD_DEV
    return loader.load_text(text, filename="build-action-old-dev.yaml")


def _many(kind: str, count: int) -> Plan:
    if kind == "tmpfs":
        mounts = tuple(MountSpec(f"m{i}", "input", f"m{i}", fs_type="tmpfs") for i in range(count))
        return Plan(name=f"many-{kind}", roots=(RootSpec("input"),), mounts=mounts)
    objects = tuple(
        ObjectSpec(f"o{i}", "input", f"o{i}", ObjectKind(kind), mode=None if kind == "symlink" else 0o755,
                   link="/proc/self/fd" if kind == "symlink" else None)
        for i in range(count)
    )
    return Plan(name=f"many-{kind}", roots=(RootSpec("input"),), mounts=(), objects=objects)


def _bench(rounds: int, count: int) -> list[str]:
    base = tempfile.mkdtemp(prefix="bench_objects.")
    if os.environ.get(MARKER):
        subprocess.run(["mount", "-t", "tmpfs", "bench", base], check=True)  # private: we unshared
    try:
        root = os.path.join(base, "input")
        os.makedirs(os.path.join(root, "toolchain"))
        engine = Engine(state_dir=os.path.join(base, "state"))
        cases = {
            "build-action, minimal /dev (devices:)": mountplan.load(REPO / "plans" / "build-action.yaml"),
            "build-action, /dev as before (tmpfs + 6 binds)": _old_build_action(),
            f"{count} symlinks": _many("symlink", count),
            f"{count} directories": _many("directory", count),
            f"{count} tmpfs mounts": _many("tmpfs", count),
        }
        times: dict[str, list[float]] = {label: [] for label in cases}
        for plan in cases.values():  # warm-up: imports, compiled-plan cache
            engine.apply(plan, {"input": root})
            engine.destroy(plan, {"input": root})
        for _ in range(rounds):
            for label, plan in cases.items():
                start = time.perf_counter()
                engine.apply(plan, {"input": root})
                engine.destroy(plan, {"input": root})
                times[label].append(time.perf_counter() - start)
        where = "root, roots+state on a private tmpfs" if os.environ.get(MARKER) else "unprivileged (user namespace)"
        lines = [
            f"kernel {os.uname().release}, python {sys.version.split()[0]}, {where}, {rounds} alternating rounds of apply+destroy"
        ]
        for label, seconds in times.items():
            plan = cases[label]
            ms = sorted(s * 1000 for s in seconds)
            lines.append(f"  {label:<48} {len(plan.mounts):>4} mounts {len(plan.objects):>4} objects"
                         f"   median {statistics.median(ms):8.2f} ms   min {ms[0]:8.2f} ms")
        per = {k: statistics.median(v) * 1e6 / count for k, v in times.items() if k.startswith(str(count))}
        lines.append("  => per entry: " + ", ".join(f"{k.split(' ', 1)[1]} {v:.0f} µs" for k, v in per.items()))
        return lines
    finally:
        if os.environ.get(MARKER):
            subprocess.run(["umount", base], check=False)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=40, help="alternating rounds")
    parser.add_argument("--count", type=int, default=100, help="entries in each of the many-entry plans")
    args = parser.parse_args()
    if is_privileged() and os.environ.get(MARKER) is None:
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("bench_objects: needs unshare(1) from util-linux when run as root")
        os.execve(unshare, [unshare, "-m", "--propagation", "private", sys.executable, *sys.argv], {**os.environ, MARKER: "1"})
    if os.environ.get(MARKER):
        lines = _bench(args.n, args.count)
    else:
        lines = run_in_sandbox(_bench, args.n, args.count, timeout=3600)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
