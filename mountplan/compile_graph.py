"""The networkx step graph of a compiled plan, written straight into networkx's own dicts."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from mountplan.compile_steps import Step

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["step_graph"]


def step_graph(
    roots: list[Step],
    members: list[tuple[str, list[Step]]],
    links: list[tuple[str, str, str]],
) -> nx.DiGraph[str]:
    """The step graph: roots, then per mount ``root -> chain[0] -> chain[1] ...``, then ``links``.

    Nodes are step ids; the Step objects live in CompiledPlan.steps. ``members``
    pairs each plan mount's root node with its chain; ``links`` are the ordering
    edges between chains, with their reasons.
    """
    import networkx as nx  # executing a plan needs only the ordered steps; the graph is built on demand

    graph: nx.DiGraph[str] = nx.DiGraph()
    node_attrs, successors, predecessors = _storage(graph)
    # add_nodes_from/add_edges_from check and merge attributes item by item:
    # ~0.2 s for 87,000 steps. Write the dicts they would leave instead, in the
    # same insertion order. That is only the same while every step id is new; a
    # plan that repeats a mount name (the loader refuses one) takes those calls.
    # A new graph has no cached results for networkx to invalidate.
    for root in roots:
        node_attrs[root.id] = {}
        successors[root.id] = {}
        predecessors[root.id] = {}
    count = len(roots)
    data: dict[str, object]
    for root_id, chain in members:
        count += len(chain)
        previous = chain[0].id
        node_attrs[previous] = {}
        successors[root_id][previous] = data = {}
        predecessors[previous] = {root_id: data}
        for step in chain[1:]:
            current = step.id
            node_attrs[current] = {}
            successors[previous] = {current: (data := {})}
            predecessors[current] = {previous: data}
            previous = current
        successors[previous] = {}
    if len(node_attrs) != count:
        return _step_graph_by_calls(roots, members, links)
    for before, after, reason in links:
        successors[before][after] = predecessors[after][before] = {"reason": reason}
    return graph


def _step_graph_by_calls(
    roots: list[Step],
    members: list[tuple[str, list[Step]]],
    links: list[tuple[str, str, str]],
) -> nx.DiGraph[str]:
    """``step_graph`` through networkx's public calls, for step ids that repeat."""
    import networkx as nx

    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(r.id for r in roots)
    chain_links: list[tuple[str, str]] = []
    for root_id, chain in members:
        ids = [s.id for s in chain]
        graph.add_nodes_from(ids)
        chain_links.append((root_id, ids[0]))
        chain_links.extend(itertools.pairwise(ids))
    graph.add_edges_from(chain_links)
    for before, after, reason in links:
        graph.add_edge(before, after, reason=reason)
    return graph


_NodeAttrs = dict[str, dict[str, object]]
_Adjacency = dict[str, dict[str, dict[str, object]]]


def _storage(graph: nx.DiGraph[str]) -> tuple[_NodeAttrs, _Adjacency, _Adjacency]:
    """networkx's own dicts behind a DiGraph: node attributes, successors, predecessors.

    The layout is the dict-of-dict-of-dict that DiGraph's docs describe ("Subclasses
    (Advanced)"); the attribute names are private but unchanged since networkx 2.0.
    tests/compiler/test_reference.py compares the result with the public calls'.
    """
    return graph._node, graph._succ, graph._pred  # type: ignore[attr-defined]
