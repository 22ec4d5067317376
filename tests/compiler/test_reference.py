"""The compiler's fast paths against a reference built the plain way.

The compiler sorts mounts itself, builds steps through slot descriptors and
writes the step graph's dicts directly. The reference here does what those
replace (networkx's own sort and graph calls, ``Step(...)``), so any difference
in order, ids, graph layout or error text shows up as a failing comparison.
"""

from __future__ import annotations

import dataclasses
import itertools

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mountplan import compiler
from mountplan.compiler import CompiledPlan, Edge, Step, StepKind, compile_apply, compile_destroy, mount_order
from mountplan.errors import CompileError
from mountplan.model import (
    Attr,
    BindSource,
    MountKind,
    MountpointSpec,
    MountSpec,
    Option,
    Plan,
    Propagation,
    RootSpec,
    SourceRef,
)

# ------------------------------------------------------------------ the reference


def _reference_order(plan: Plan) -> tuple[tuple[str, ...], tuple[Edge, ...]]:
    compiler._check_targets(plan.mounts)
    mounts = plan.mounts
    edges: dict[tuple[str, str], Edge] = {}
    for edge in (
        *compiler._nesting_edges(mounts),
        *compiler._source_edges(mounts),
        *compiler._after_edges(mounts),
    ):
        if edge.before == edge.after:
            raise CompileError(f"mount {edge.before!r} depends on itself: {edge.reason}")
        edges.setdefault((edge.before, edge.after), edge)
    graph: nx.DiGraph[str] = nx.DiGraph()
    index = {m.name: i for i, m in enumerate(plan.mounts)}
    graph.add_nodes_from(index)
    graph.add_edges_from(edges)
    try:
        order = tuple(nx.lexicographical_topological_sort(graph, key=index.__getitem__))
    except nx.NetworkXUnfeasible:
        raise CompileError(compiler._describe_cycle(graph, edges)) from None
    return order, tuple(edges[k] for k in sorted(edges, key=lambda k: (index[k[0]], index[k[1]])))


def _reference_chain(m: MountSpec) -> list[tuple[StepKind, tuple[tuple[str, str], ...]]]:
    target = (("target", f"{m.root}:{m.target}"),)
    attrs = ",".join(sorted(a.value for a in m.attrs)) or "-"
    chain: list[tuple[StepKind, tuple[tuple[str, str], ...]]] = []
    if m.kind is MountKind.FILESYSTEM:
        assert m.fs_type is not None
        chain.append((StepKind.FSOPEN, (("type", m.fs_type),)))
        chain.append((StepKind.FSCONFIG, (("option", f"source={m.source or m.fs_type}"),)))
        for opt in m.options:
            chain.append((StepKind.FSCONFIG, (("option", opt.render()),)))
        chain.append((StepKind.CREATE, ()))
        chain.append((StepKind.FSMOUNT, (("attrs", attrs),)))
    else:
        assert m.bind is not None
        source = (("source", m.bind.source.render()), ("recursive", str(m.bind.recursive).lower()))
        chain.append((StepKind.OPEN_TREE, source))
        chain.append((StepKind.SET_ATTR, (("attrs", attrs),)))
    chain.append((StepKind.ENSURE_MOUNTPOINT, target + (("mode", oct(m.mountpoint.mode)),)))
    chain.append((StepKind.RESOLVE_TARGET, target))
    chain.append((StepKind.JOURNAL_ID, ()))
    chain.append((StepKind.MOVE_MOUNT, target))
    chain.append((StepKind.VERIFY, target))
    chain.append((StepKind.SET_PROPAGATION, (("propagation", m.propagation.value),)))
    return chain


def _reference_compile(plan: Plan, *, destroy: bool) -> tuple[tuple[Step, ...], nx.DiGraph[str]]:
    """Steps and step graph as compile_apply/compile_destroy were first written."""
    order, edges = _reference_order(plan)
    chains: dict[str, list[Step]] = {}
    for m in plan.mounts:
        if destroy:
            target = (("target", f"{m.root}:{m.target}"),)
            chains[m.name] = [
                Step(f"{m.name}#00:unmount", StepKind.UNMOUNT, m.name, m.root, target),
                Step(f"{m.name}#01:rmdir", StepKind.REMOVE_MOUNTPOINT, m.name, m.root, target),
            ]
        else:
            chains[m.name] = [
                Step(f"{m.name}#{i:02d}:{kind.value}", kind, m.name, m.root, args)
                for i, (kind, args) in enumerate(_reference_chain(m))
            ]
    if destroy:
        order = tuple(reversed(order))
    roots = [Step(f"root:{r}", StepKind.OPEN_ROOT, None, r) for r in sorted({m.root for m in plan.mounts})]
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(r.id for r in roots)
    links: list[tuple[str, str]] = []
    for m in plan.mounts:
        ids = [s.id for s in chains[m.name]]
        graph.add_nodes_from(ids)
        links.append((f"root:{m.root}", ids[0]))
        links.extend(itertools.pairwise(ids))
    graph.add_edges_from(links)
    for edge in edges:
        before, after = (edge.after, edge.before) if destroy else (edge.before, edge.after)
        graph.add_edge(chains[before][-1].id, chains[after][0].id, reason=edge.reason)
    steps = list(roots)
    for name in order:
        steps.extend(chains[name])
    return tuple(steps), graph


def _layout(graph: nx.DiGraph[str]) -> tuple[object, ...]:
    """Everything a caller can observe of a graph, in iteration order."""
    return (
        list(graph.nodes(data=True)),
        list(graph.edges(data=True)),
        [(n, list(graph.pred[n].items()), list(graph.succ[n].items())) for n in graph],
        list(graph.in_edges),
        graph.graph,
    )


# ------------------------------------------------------------------ plans

_PATHS = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map("/".join)


@st.composite
def _mounts(draw: st.DrawFn, index: int, count: int, target: str) -> MountSpec:
    # Now and then a repeated name, an unknown or circular 'after', so the error
    # paths and the repeated-name graph path are compared too.
    name = f"m{draw(st.integers(0, count)) if draw(st.integers(0, 19)) == 0 else index}"
    root = draw(st.sampled_from(["r", "s"]))
    after: tuple[str, ...] = ()
    if draw(st.integers(0, 9)) == 0:
        after = (f"m{draw(st.integers(0, count))}",)
    attrs = frozenset(draw(st.lists(st.sampled_from(list(Attr)), max_size=2)))
    propagation = draw(st.sampled_from(list(Propagation)))
    mountpoint = MountpointSpec(mode=draw(st.sampled_from([0o755, 0o700])))
    if draw(st.booleans()):
        source = SourceRef(draw(_PATHS), draw(st.sampled_from(["r", "s", None])))
        bind = BindSource(source, recursive=draw(st.booleans()))
        return MountSpec(name, root, target, bind=bind, attrs=attrs, propagation=propagation, after=after)
    options = [Option("size", "1m"), Option("noswap"), Option("lowerdir", "a:b/c"), Option("upperdir", "c")]
    return MountSpec(
        name,
        root,
        target,
        fs_type=draw(st.sampled_from(["tmpfs", "overlay"])),
        source=draw(st.sampled_from([None, "src"])),
        options=tuple(draw(st.lists(st.sampled_from(options), max_size=3))),
        attrs=attrs,
        propagation=propagation,
        mountpoint=mountpoint,
        after=after,
    )


@st.composite
def _plans(draw: st.DrawFn) -> Plan:
    targets = draw(st.lists(_PATHS, max_size=12, unique=True))
    mounts = tuple(draw(_mounts(i, len(targets), target)) for i, target in enumerate(targets))
    return Plan("t", (RootSpec("r"), RootSpec("s")), mounts)


def _outcome(plan: Plan, *, destroy: bool, reference: bool) -> tuple[object, ...]:
    try:
        if reference:
            steps, graph = _reference_compile(plan, destroy=destroy)
        else:
            compiled = (compile_destroy if destroy else compile_apply)(plan)
            steps, graph = compiled.steps, compiled.graph
    except CompileError as exc:
        return ("error", str(exc))
    return tuple(map(repr, steps)), _layout(graph)


# ------------------------------------------------------------------ tests


@settings(max_examples=300, deadline=None)
@given(_plans(), st.booleans())
def test_matches_reference(plan: Plan, destroy: bool) -> None:
    """Steps, graph layout (order of nodes, edges, adjacency) and error text equal the reference's."""
    assert _outcome(plan, destroy=destroy, reference=False) == _outcome(plan, destroy=destroy, reference=True)


@settings(max_examples=300, deadline=None)
@given(_plans())
def test_mount_order_matches_networkx_sort(plan: Plan) -> None:
    """mount_order is networkx's lexicographic topological sort keyed by plan position."""
    try:
        expected: object = _reference_order(plan)
    except CompileError as exc:
        expected = str(exc)
    try:
        actual: object = mount_order(plan)
    except CompileError as exc:
        actual = str(exc)
    assert actual == expected


def _keyed_graphs(n: int) -> st.SearchStrategy[tuple[list[int], set[tuple[int, int]]]]:
    node = st.integers(0, n - 1)
    return st.tuples(st.permutations(range(n)), st.sets(st.tuples(node, node).filter(lambda p: p[0] != p[1])))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 9).flatmap(_keyed_graphs))
def test_earliest_first_order_is_networkx_lexicographic_sort(
    case: tuple[list[int], set[tuple[int, int]]],
) -> None:
    """On any graph (cycles included) the sort agrees with networkx, and reports a cycle as None."""
    keys, pairs = case
    index = {f"n{i}": key for i, key in enumerate(keys)}
    pairs_by_name = [(f"n{a}", f"n{b}") for a, b in sorted(pairs)]
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(index)
    graph.add_edges_from(pairs_by_name)
    try:
        expected = tuple(nx.lexicographical_topological_sort(graph, key=index.__getitem__))
    except nx.NetworkXUnfeasible:
        expected = None
    assert compiler._earliest_first_order(index, pairs_by_name) == expected


def _repeated_name_plan() -> Plan:
    return Plan(
        "t",
        (RootSpec("r"), RootSpec("s")),
        (
            MountSpec("a", "r", "x", fs_type="tmpfs"),
            MountSpec("b", "r", "x/y", bind=BindSource(SourceRef("x/z", "r"))),
            MountSpec("a", "s", "q", bind=BindSource(SourceRef("x", "r"))),
        ),
    )


@pytest.mark.parametrize("destroy", [False, True], ids=["apply", "destroy"])
def test_repeated_mount_name_builds_the_same_graph(destroy: bool) -> None:
    """A hand-built plan that repeats a mount name (the loader refuses one) still compiles as before."""
    plan = _repeated_name_plan()
    assert _outcome(plan, destroy=destroy, reference=False) == _outcome(plan, destroy=destroy, reference=True)


def test_step_graph_is_an_ordinary_digraph() -> None:
    """The graph shares each edge's data between succ and pred, and networkx mutations keep working."""
    plan = _repeated_name_plan()
    plan = dataclasses.replace(plan, mounts=plan.mounts[:2])
    graph = compile_apply(plan).graph
    reference = _reference_compile(plan, destroy=False)[1]
    assert type(graph) is nx.DiGraph
    assert all(graph.succ[u][v] is graph.pred[v][u] for u, v in graph.edges)
    for g in (graph, reference):
        g.edges["a#09:set_propagation", "b#00:open_tree"]["weight"] = 2
        g.add_edge("b#07:set_propagation", "extra")
        g.remove_node("a#03:fsmount")
        g.nodes["root:r"]["seen"] = True
    assert _layout(graph) == _layout(reference)
    assert graph.nodes["b#00:open_tree"] == {}


def test_compiled_steps_are_ordinary_frozen_steps() -> None:
    """Steps built by the compiler equal, hash and print like Step(...), and stay frozen."""
    compiled: CompiledPlan = compile_apply(_repeated_name_plan())
    step = compiled.steps[1]
    built = Step(step.id, step.kind, step.mount, step.root, step.args)
    assert (step, hash(step), repr(step)) == (built, hash(built), repr(built))
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.id = "other"  # type: ignore[misc]


def test_chain_is_grouped_like_the_steps() -> None:
    """chain() gives each mount's steps in order, as grouping ``steps`` by mount would."""
    compiled = compile_apply(_repeated_name_plan())
    for name in ("a", "b"):
        assert compiled.chain(name) == tuple(s for s in compiled.steps if s.mount == name)
    assert compiled.chain("missing") == ()
