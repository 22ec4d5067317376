"""Wall time of starting the mountplan command: --help and validating plans/demo.yaml.

    .venv/bin/python bench/bench_startup.py [-n 20]

Python's own start-up (``python -c pass``) is printed as the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wall(argv: list[str], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20, help="runs per command (median reported)")
    args = parser.parse_args()
    script = Path(sys.executable).with_name("mountplan")
    mountplan = [str(script)] if script.exists() else [sys.executable, "-m", "mountplan"]
    cases = [
        ("python -c pass (floor)", [sys.executable, "-c", "pass"]),
        ("mountplan --help", [*mountplan, "--help"]),
        ("mountplan validate plans/demo.yaml", [*mountplan, "validate", "plans/demo.yaml"]),
    ]
    print(f"kernel {os.uname().release}, python {sys.version.split()[0]}, {' '.join(mountplan)}, median of {args.n}")
    for label, argv in cases:
        ms = sorted(t * 1000 for t in _wall(argv, args.n))
        print(f"{label:<38} median {statistics.median(ms):7.1f} ms   min {ms[0]:7.1f} ms   max {ms[-1]:7.1f} ms")


if __name__ == "__main__":
    main()
