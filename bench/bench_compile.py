"""Compile a 10,000-mount plan (mixed nesting, binds of planned mounts) and print the median time.

Touches no kernel. ``.venv/bin/python bench/bench_compile.py [--mounts 10000] [--runs 7]``
"""

from __future__ import annotations

import argparse
import statistics
import time

from mountplan.compiler import CompiledPlan, compile_apply
from mountplan.model import BindSource, MountSpec, Option, Plan, RootSpec, SourceRef


def mixed_plan(count: int) -> Plan:
    """Flat tmpfs, chains nested up to 6 deep, and every 10th mount a bind of an earlier target."""
    mounts: list[MountSpec] = []
    targets: list[str] = []
    for i in range(count):
        name = f"m{i:05d}"
        if i % 10 == 9 and targets:
            source = targets[(i * 7) % len(targets)]
            mounts.append(MountSpec(name=name, root="r", target=f"binds/{name}", bind=BindSource(SourceRef(source, "r"))))
            continue
        depth = i % 6
        target = f"top{i // 6:05d}" if depth == 0 or not targets else f"{targets[-1]}/{name}"
        targets.append(target)
        mounts.append(MountSpec(name=name, root="r", target=target, fs_type="tmpfs", options=(Option("size", "1m"),)))
    return Plan(name="bench", roots=(RootSpec("r"),), mounts=tuple(mounts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mounts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    plan = mixed_plan(args.mounts)

    def timed(with_graph: bool) -> tuple[list[float], CompiledPlan]:
        times, kept = [], None
        for _ in range(args.runs):
            t0 = time.perf_counter()
            result = compile_apply(plan)
            if with_graph:
                result.graph  # noqa: B018 - materialise the networkx DAG
            times.append(time.perf_counter() - t0)
            # Rebinding frees the previous run's steps and graph: teardown, not
            # compile time, so it happens here, outside the timed region.
            kept = result
        assert kept is not None
        return times, kept

    for label, with_graph in (("compile_apply (steps, order)", False), ("compile_apply + .graph (networkx DAG)", True)):
        times, compiled = timed(with_graph)
        extra = f", {compiled.graph.number_of_nodes()} graph nodes" if with_graph else ""
        print(
            f"{label}: {args.mounts} mounts, {len(compiled.steps)} steps, {len(compiled.edges)} ordering edges{extra}; "
            f"median {statistics.median(times) * 1000:.0f} ms of {args.runs} runs "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})"
        )

if __name__ == "__main__":
    main()
