"""Ordering passes: the edges between mounts (nesting, sources, ``after``) and their deterministic run order.

A cycle or two mounts on one target is a CompileError; a cycle is reported
with the reason for each of its edges, the shortest and alphabetically first.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from mountplan.compile_objects import object_edges
from mountplan.compile_steps import Edge
from mountplan.errors import CompileError
from mountplan.model import MountSpec, Plan

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["mount_order"]


def _is_beneath(path: str, ancestor: str) -> bool:
    return path.startswith(ancestor + "/")


def _nesting_edges(mounts: tuple[MountSpec, ...]) -> Iterator[Edge]:
    """A target beneath another planned target comes after it."""
    by_root: dict[str, list[MountSpec]] = {}
    for m in mounts:
        by_root.setdefault(m.root, []).append(m)
    for group in by_root.values():
        # Sorting by target puts every ancestor before its descendants, so one
        # pass with a stack finds the nearest enclosing mount in O(n log n).
        stack: list[MountSpec] = []
        for m in sorted(group, key=lambda s: s.target.split("/")):
            while stack and not _is_beneath(m.target, stack[-1].target):
                stack.pop()
            if stack:
                yield Edge(stack[-1].name, m.name, f"{m.name}'s target lies beneath {stack[-1].name}'s")
            stack.append(m)


def _source_edges(mounts: tuple[MountSpec, ...]) -> Iterator[Edge]:
    """A bind or overlay source inside another planned mount comes after it."""
    targets: dict[tuple[str, str], MountSpec] = {(m.root, m.target): m for m in mounts}
    for m in mounts:
        for ref in m.source_refs():
            if ref.root is None:
                continue
            # Every planned target covering the source is the path or one of its
            # ancestors: look those up instead of scanning every target.
            parts = ref.path.split("/")
            for depth in range(len(parts), 0, -1):
                other = targets.get((ref.root, "/".join(parts[:depth])))
                if other is not None and other.name != m.name:
                    yield Edge(other.name, m.name, f"{m.name}'s source {ref.render()} lies inside {other.name}")


def _after_edges(mounts: tuple[MountSpec, ...]) -> Iterator[Edge]:
    names = {m.name for m in mounts}
    for m in mounts:
        for dep in m.after:
            if dep not in names:
                raise CompileError(f"mount {m.name!r}: 'after' names unknown mount {dep!r}")
            yield Edge(dep, m.name, f"{m.name} is declared after {dep}")


def _check_targets(mounts: tuple[MountSpec, ...]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for m in mounts:
        key = (m.root, m.target)
        if key in seen:
            raise CompileError(f"mounts {seen[key]!r} and {m.name!r} both target {m.root}:{m.target}")
        seen[key] = m.name


def mount_order(plan: Plan) -> tuple[tuple[str, ...], tuple[Edge, ...]]:
    """Order the plan's mounts and objects; raise CompileError naming a cycle with its reasons."""
    _check_targets(plan.mounts)
    edges: dict[tuple[str, str], Edge] = {}
    found = (*_nesting_edges(plan.mounts), *_source_edges(plan.mounts), *_after_edges(plan.mounts))
    if plan.objects:
        found += tuple(object_edges(plan))
    for edge in found:
        if edge.before == edge.after:
            raise CompileError(f"mount {edge.before!r} depends on itself: {edge.reason}")
        edges.setdefault((edge.before, edge.after), edge)
    index = {m.name: i for i, m in enumerate(plan.mounts)}
    for i, obj in enumerate(plan.objects, len(index)):
        if obj.name in index:
            raise CompileError(f"object {obj.name!r} has the name of a mount; names are shared")
        index[obj.name] = i
    order = _earliest_first_order(index, edges)
    if order is None:
        import networkx as nx  # only to describe the cycle

        graph: nx.DiGraph[str] = nx.DiGraph()
        graph.add_nodes_from(index)
        graph.add_edges_from(edges)
        raise CompileError(_describe_cycle(graph, edges))
    return order, tuple(edges[k] for k in sorted(edges, key=lambda k: (index[k[0]], index[k[1]])))


def _earliest_first_order(index: dict[str, int], pairs: Iterable[tuple[str, str]]) -> tuple[str, ...] | None:
    """The topological order that always takes the ready mount earliest in plan order.

    This is ``nx.lexicographical_topological_sort(graph, key=index.__getitem__)``:
    the keys are distinct, so exactly one order fits, whoever computes it. Doing it
    here on integer ranks skips building a 10,000-node networkx graph (and its
    degree views, which are cyclic garbage). None when ``pairs`` form a cycle.
    """
    names = sorted(index, key=index.__getitem__)
    rank = {name: r for r, name in enumerate(names)}
    successors: list[list[int]] = [[] for _ in names]
    waiting_for = [0] * len(names)
    for before, after in pairs:
        successors[rank[before]].append(rank[after])
        waiting_for[rank[after]] += 1
    ready = [r for r, count in enumerate(waiting_for) if count == 0]  # ascending: already a heap
    order: list[str] = []
    while ready:
        r = heapq.heappop(ready)
        order.append(names[r])
        for s in successors[r]:
            waiting_for[s] -= 1
            if waiting_for[s] == 0:
                heapq.heappush(ready, s)
    return tuple(order) if len(order) == len(names) else None


def _describe_cycle(graph: nx.DiGraph[str], edges: dict[tuple[str, str], Edge]) -> str:
    import networkx as nx
    cycle = min(
        (c for c in nx.simple_cycles(graph)),
        key=lambda c: (len(c), sorted(c)),
    )
    start = cycle.index(min(cycle))
    cycle = cycle[start:] + cycle[:start]
    hops = [
        f"{a} -> {b} ({edges[(a, b)].reason})" for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)
    ]
    return "cycle between mounts: " + "; ".join(hops)
