"""What one mountplan.mountplan.plan task costs, side by side with the command it wraps and Ansible's own floor.

Each round, alternating, with a two-tmpfs plan:
  - `mountplan apply` as a process (a fresh apply, then the same apply again: no changes);
  - one ansible-playbook run of the module (fresh, then again), with Ansible's defaults and with pipelining;
  - one ansible-playbook run of `ansible.builtin.command: /bin/true` (what any one-task play costs).
The mounts are destroyed with the CLI between rounds. Needs ansible-core in this
interpreter's environment (scripts/test-ansible installs it). Runs inside a private
mount namespace it makes itself: as root it re-executes under
``unshare -m --propagation private``; otherwise it uses run_in_sandbox (user namespaces).

    .venv/bin/python bench/bench_ansible.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mountplan.testing import is_privileged, run_in_sandbox

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKER = "MOUNTPLAN_BENCH_IN_NAMESPACE"
PLAN = """\
version: 1
name: bench-fleet
roots: {r: {}}
mounts:
  - {name: scratch, root: r, target: scratch, type: tmpfs, options: {size: 8M}}
  - {name: cache, root: r, target: scratch/cache, type: tmpfs}
"""


def _env(base: str, pipelining: bool) -> dict[str, str]:
    config = Path(base, "ansible.cfg")
    config.write_text("[defaults]\n")
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "ansible"),
        "ANSIBLE_HOME": os.path.join(base, "ansible-home"),
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_PIPELINING": "1" if pipelining else "0",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }


def _playbook(base: str, name: str, task: dict[str, object]) -> str:
    path = os.path.join(base, f"{name}.yml")
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": [task]}]
    Path(path).write_text(yaml.safe_dump(play))
    return path


def _time(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU (user+system of the process and everything it waited for) seconds of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _bench(rounds: int) -> list[str]:
    base = tempfile.mkdtemp(prefix="bench_ansible.")
    try:
        root, state = os.path.join(base, "root"), os.path.join(base, "state")
        os.mkdir(root)
        plan = os.path.join(base, "plan.yaml")
        Path(plan).write_text(PLAN)
        cli = [str(BIN / "mountplan"), "-q"]
        common = [plan, "--root", f"r={root}", "--state-dir", state]
        module: dict[str, object] = {"mountplan.mountplan.plan": {"plan": plan, "roots": {"r": root}, "state_dir": state}}
        apply_book = _playbook(base, "apply", module)
        true_book = _playbook(base, "true", {"ansible.builtin.command": "/bin/true"})
        playbook = [str(BIN / "ansible-playbook"), "-i", "localhost,"]
        defaults, pipelined = _env(base, False), _env(base, True)
        times: dict[str, list[tuple[float, float]]] = {}

        def record(label: str, seconds: tuple[float, float]) -> None:
            times.setdefault(label, []).append(seconds)

        for _ in range(rounds):
            record("mountplan apply (fresh)", _time([*cli, "apply", *common]))
            record("mountplan apply (again, no changes)", _time([*cli, "apply", *common]))
            subprocess.run([*cli, "destroy", *common], check=True, stdout=subprocess.DEVNULL)
            for label, env in (("defaults", defaults), ("pipelining", pipelined)):
                record(f"ansible-playbook, module task (fresh), {label}", _time([*playbook, apply_book], env))
                record(f"ansible-playbook, module task (again), {label}", _time([*playbook, apply_book], env))
                subprocess.run([*cli, "destroy", *common], check=True, stdout=subprocess.DEVNULL)
                record(f"ansible-playbook, command /bin/true, {label}", _time([*playbook, true_book], env))
        who = "root" if is_privileged() else "unprivileged (user namespace)"
        lines = [
            f"kernel {os.uname().release}, python {sys.version.split()[0]}, {who}, {rounds} alternating rounds; "
            + "ratio = median CPU / median CPU of a fresh `mountplan apply`"
        ]
        floor = statistics.median(cpu for _, cpu in times["mountplan apply (fresh)"])
        for label, runs in times.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            lines.append(
                f"  {label:<52} wall median {wall * 1000:7.0f} ms  min {min(w for w, _ in runs) * 1000:7.0f}  "
                f"cpu median {cpu * 1000:7.0f} ms  {cpu / floor:5.1f}x"
            )
        return lines
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args()
    if not (BIN / "ansible-playbook").exists():
        sys.exit("bench_ansible: ansible-core is not installed in this environment (scripts/test-ansible installs it)")
    if is_privileged() and os.environ.get(MARKER) is None:
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("bench_ansible: needs unshare(1) from util-linux when run as root")
        env = {**os.environ, MARKER: "1"}
        os.execve(unshare, [unshare, "-m", "--propagation", "private", sys.executable, *sys.argv], env)
    if os.environ.get(MARKER):
        lines = _bench(args.rounds)
    else:
        lines = run_in_sandbox(_bench, args.rounds, timeout=3600)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
