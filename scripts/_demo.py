"""The demo's body, run inside the throwaway namespace scripts/demo creates."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PLAN = os.path.relpath(os.path.join(HERE, "..", "plans", "demo.yaml"))
MOUNTPLAN = os.path.join(os.path.dirname(sys.executable), "mountplan")


def run(*args: str) -> None:
    print(f"\n$ mountplan {' '.join(args)}", flush=True)
    subprocess.run([MOUNTPLAN, *args], check=True)


def table() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(f.read().splitlines())


def main() -> int:
    work = tempfile.mkdtemp(prefix="mountplan-demo-")
    root = os.path.join(work, "root")
    os.mkdir(root)
    common = ["--root", f"sandbox={root}", "--state-dir", os.path.join(work, "state")]
    before = table()
    run("validate", PLAN)
    run("steps", PLAN)
    run("apply", PLAN, *common)
    # Print the header line too, so the command shown is the one whose output follows.
    shown = f"findmnt --list -o TARGET,FSTYPE,OPTIONS,PROPAGATION | awk 'NR == 1 || index($1, \"{root}\") == 1'"
    print(f"\n$ {shown}", flush=True)
    out = subprocess.run(
        ["findmnt", "--list", "-o", "TARGET,FSTYPE,OPTIONS,PROPAGATION"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    print("\n".join([out[0]] + [line for line in out[1:] if line.startswith(root)]))
    run("apply", PLAN, *common)
    run("destroy", PLAN, *common)
    same = table() == before
    left = os.listdir(root)
    print(f"\nmount table restored: {same}; left in the root: {left or 'nothing'}")
    return 0 if same and not left else 1


if __name__ == "__main__":
    sys.exit(main())
