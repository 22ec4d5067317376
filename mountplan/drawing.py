"""Draw a compiled plan as Graphviz dot or Mermaid: what ``mountplan graph`` prints.

A node shows a mount's name, where it lands, what it mounts, its attributes and
its propagation. An edge is drawn only when no longer path already implies it
(the transitive reduction): with ``b`` beneath ``a`` and a bind of ``b/x``, the
bind's edge from ``a`` says nothing the path ``a -> b -> bind`` does not.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from mountplan.compiler import CompiledPlan, Edge
from mountplan.model import Attr, MountSpec, ObjectSpec

__all__ = ["mount_edges", "render_dot", "render_mermaid"]


def mount_edges(compiled: CompiledPlan) -> list[Edge]:
    """The ordering edges worth drawing: the compiler's, in its order, less the transitive ones."""
    pairs = [(e.before, e.after) for e in compiled.edges]
    kept = _reduction(compiled.mount_order, pairs)
    return [e for e in compiled.edges if (e.before, e.after) in kept]


def _reduction(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The edges of the transitive reduction of a DAG (the compiler has refused cycles).

    Each node's descendants are a bit set; a node's successors are taken in
    topological order, so one already reached through an earlier successor is
    implied by a longer path. networkx's transitive_reduction walks every node's
    descendants again: seconds for a thousand mounts nested in one chain.
    """
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    position = {node: index for index, node in enumerate(nx.topological_sort(graph))}
    reach: dict[str, int] = {}
    kept: set[tuple[str, str]] = set()
    for node in sorted(position, key=position.__getitem__, reverse=True):
        seen = 0
        for successor in sorted(graph.successors(node), key=position.__getitem__):
            if not seen >> position[successor] & 1:
                kept.add((node, successor))
                seen |= reach[successor] | 1 << position[successor]
        reach[node] = seen
    return kept


def _step_edges(compiled: CompiledPlan) -> list[tuple[str, str]]:
    """The step graph's edges less the transitive ones.

    Every chain is a path entered at its first step and left from its last, so a
    path between steps of two chains exists exactly when one between the chains
    does: reduce the graph of roots and mounts (10x smaller) and keep the chains.
    """
    graph = compiled.graph

    def unit(step_id: str) -> str:
        mount = compiled.step(step_id).mount
        return f"mount:{mount}" if mount is not None else step_id

    between = [(a, b, unit(a), unit(b)) for a, b in graph.edges]
    kept = _reduction({u for _, _, u, _ in between} | {v for *_, v in between},
                      [(u, v) for _, _, u, v in between if u != v])
    return sorted((a, b) for a, b, u, v in between if u == v or (u, v) in kept)


def mount_label(m: MountSpec) -> tuple[str, ...]:
    """The lines of a mount's node: name, root:target, what it mounts, attrs, propagation."""
    if m.bind is None:
        what = str(m.fs_type)
    else:
        what = f"{'rbind' if m.bind.recursive else 'bind'} {m.bind.source.render()}"
        if m.bind.idmap is not None:
            what += " (idmapped)"
    # Enum order, not set order: the same plan always draws the same label.
    attrs = ",".join(a.value for a in Attr if a in m.attrs) or "none"
    return (m.name, f"{m.root}:{m.target}", what, f"attrs: {attrs}", f"propagation: {m.propagation.value}")


def object_label(obj: ObjectSpec) -> tuple[str, ...]:
    """The lines of a planned object's node: name, root:path, what it is."""
    return (obj.name, f"{obj.root}:{obj.path}", obj.describe())


def _labels(compiled: CompiledPlan) -> dict[str, tuple[str, ...]]:
    # Plan.mount scans the list: once per node is quadratic in a 10,000-mount plan.
    labels = {m.name: mount_label(m) for m in compiled.plan.mounts}
    labels.update((o.name, object_label(o)) for o in compiled.plan.objects)
    return labels


def _dot_text(lines: Iterable[str]) -> str:
    """A dot string literal; lines are joined with dot's own ``\\n`` escape."""
    escaped = (line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return '"' + "\\n".join(escaped) + '"'


def render_dot(compiled: CompiledPlan, *, steps: bool = False) -> str:
    """Graphviz text: mounts and their ordering edges (or every step with ``steps``)."""
    lines = [f"digraph {_dot_text([compiled.plan.name])} {{", "  rankdir=LR;", "  node [shape=box];"]
    if steps:
        for step in compiled.steps:
            lines.append(f"  {_dot_text([step.id])} [label={_dot_text([step.render()])}];")
        for a, b in _step_edges(compiled):
            lines.append(f"  {_dot_text([a])} -> {_dot_text([b])};")
    else:
        labels = _labels(compiled)
        for name in compiled.mount_order:
            label = _dot_text(labels[name])
            lines.append(f"  {_dot_text([name])} [label={label}];")
        for edge in mount_edges(compiled):
            ends = f"{_dot_text([edge.before])} -> {_dot_text([edge.after])}"
            lines.append(f"  {ends} [label={_dot_text([edge.reason])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(lines: Iterable[str]) -> str:
    return "<br/>".join(line.replace('"', "#quot;") for line in lines)


def render_mermaid(compiled: CompiledPlan) -> str:
    """Mermaid flowchart of the mounts and why each edge exists (renders in code review)."""
    ids = {name: f"m{index}" for index, name in enumerate(compiled.mount_order)}
    labels = _labels(compiled)
    lines = ["flowchart TD"]
    for name in compiled.mount_order:
        lines.append(f'  {ids[name]}["{_mermaid_text(labels[name])}"]')
    for edge in mount_edges(compiled):
        lines.append(f'  {ids[edge.before]} -->|"{_mermaid_text([edge.reason])}"| {ids[edge.after]}')
    return "\n".join(lines) + "\n"
