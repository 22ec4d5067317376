"""Compile a Plan into a networkx DAG of new-mount-API steps.

The graph is built by small named passes (terraform style): one chain of steps
per mount (:mod:`mountplan.compile_chains`), then ordering edges between chains
(nesting, sources, ``after``: :mod:`mountplan.compile_order`); this module
assembles them into a :class:`CompiledPlan`, whose networkx graph
:mod:`mountplan.compile_graph` builds on demand.
Nothing here touches the kernel; whether a mountpoint exists, or a bind source is
a file, is decided when the ``ensure_mountpoint`` step runs.

Step order is deterministic: a lexicographic topological sort keyed by plan
order, so the same plan always yields byte-identical output.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mountplan.compile_chains import apply_chains, destroy_chains
from mountplan.compile_graph import step_graph
from mountplan.compile_objects import object_apply_chains, object_destroy_chains
from mountplan.compile_order import (  # noqa: F401 - tests/compiler/test_reference.py reads the passes here
    _after_edges,
    _check_targets,
    _describe_cycle,
    _earliest_first_order,
    _nesting_edges,
    _source_edges,
    mount_order,
)
from mountplan.compile_steps import Edge, Step, StepKind, root_step
from mountplan.model import Plan

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "CompiledPlan",
    "Edge",
    "Step",
    "StepKind",
    "compile_apply",
    "compile_destroy",
    "mount_order",
]


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """The step graph plus its deterministic order."""

    plan: Plan
    steps: tuple[Step, ...]
    #: Run order of the plan's mounts and objects (names; objects only when the plan has some).
    mount_order: tuple[str, ...]
    edges: tuple[Edge, ...]
    _chains: dict[str, list[Step]] = field(default_factory=dict, compare=False, repr=False)
    _by_id: dict[str, Step] = field(default_factory=dict, compare=False, repr=False)
    #: What step_graph needs, kept until the graph is first asked for.
    _graph_parts: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    _graph: list[nx.DiGraph[str]] = field(default_factory=list, compare=False, repr=False)

    @property
    def graph(self) -> nx.DiGraph[str]:
        """The networkx step graph (node = step id), built on first use.

        Executing a plan needs only the ordered steps; building 8-odd graph nodes
        per mount is left to the callers that render or inspect the graph.
        """
        if not self._graph:
            with _no_gc():
                self._graph.append(step_graph(*self._graph_parts))
        return self._graph[0]

    def chain(self, mount: str) -> tuple[Step, ...]:
        """The steps of one mount or planned object, in order."""
        if not self._chains:
            for step in self.steps:
                if step.mount is not None:
                    self._chains.setdefault(step.mount, []).append(step)
        return tuple(self._chains.get(mount, ()))

    def step(self, step_id: str) -> Step:
        """The Step behind a graph node id."""
        if not self._by_id:
            self._by_id.update((s.id, s) for s in self.steps)
        return self._by_id[step_id]

    def transcript(self) -> Iterator[str]:
        for index, step in enumerate(self.steps, 1):
            yield f"{index:4d}. {step.render()}"

    def to_json(self) -> list[dict[str, object]]:
        return [s.to_json() for s in self.steps]


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    # Compiling allocates ~10 objects per step and nothing cyclic; the cyclic
    # collector's generation-2 passes alone cost ~40% of a 10,000-mount compile.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compile_apply(plan: Plan) -> CompiledPlan:
    """Build the apply graph: per-mount chains joined by ordering edges."""
    with _no_gc():
        order, edges = mount_order(plan)
        chains = apply_chains(plan.mounts)
        if plan.objects:
            chains.update(object_apply_chains(plan.objects))
        return _assemble(plan, chains, order, edges, reverse=False)


def compile_destroy(plan: Plan) -> CompiledPlan:
    """The destroy graph: the apply order reversed, unmount then remove mountpoints."""
    with _no_gc():
        return _compile_destroy(plan)


def _compile_destroy(plan: Plan) -> CompiledPlan:
    order, edges = mount_order(plan)
    chains = destroy_chains(plan.mounts)
    if plan.objects:
        chains.update(object_destroy_chains(plan.objects))
    return _assemble(plan, chains, tuple(reversed(order)), edges, reverse=True)


def _assemble(
    plan: Plan,
    chains: dict[str, list[Step]],
    order: tuple[str, ...],
    edges: tuple[Edge, ...],
    *,
    reverse: bool,
) -> CompiledPlan:
    roots = [root_step(r) for r in sorted({m.root for m in plan.mounts} | {o.root for o in plan.objects})]
    members = [(f"root:{m.root}", chains[m.name]) for m in plan.mounts]
    members += [(f"root:{o.root}", chains[o.name]) for o in plan.objects]
    links: list[tuple[str, str, str]] = []
    for edge in edges:
        before, after = (edge.after, edge.before) if reverse else (edge.before, edge.after)
        links.append((chains[before][-1].id, chains[after][0].id, edge.reason))
    # Chains are linear and inter-chain edges run from the end of one chain to
    # the start of another, so chains expanded in mount order are a topological
    # order of the step graph; sorting ~8 steps a mount through networkx would
    # cost seconds for 10,000 mounts.
    steps = list(roots)
    for name in order:
        steps.extend(chains[name])
    return CompiledPlan(
        plan=plan, steps=tuple(steps), mount_order=order, edges=edges, _chains=chains,
        _graph_parts=(roots, members, links),
    )

