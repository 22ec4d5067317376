"""Drawing a compiled plan (``mountplan graph``): labels, the transitive reduction, goldens."""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mountplan import loader
from mountplan.compiler import compile_apply, compile_destroy
from mountplan.drawing import mount_edges, render_dot, render_mermaid
from mountplan.model import Attr, BindSource, MountSpec, Plan, Propagation, RootSpec, SourceRef

PLANS = sorted((Path(__file__).parents[2] / "plans").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"


def _plan(*mounts: MountSpec) -> Plan:
    return Plan(name="t", roots=(RootSpec("r"),), mounts=mounts)


#: outer at a, inner at a/b, and a bind of a/b/x: the bind's source lies inside both
#: outer and inner, so the compiler orders it after each; outer -> view is transitive.
NESTED_BIND = _plan(
    MountSpec("outer", "r", "a", fs_type="tmpfs"),
    MountSpec("inner", "r", "a/b", fs_type="tmpfs"),
    MountSpec("view", "r", "v", bind=BindSource(SourceRef("a/b/x", "r"))),
)


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
@pytest.mark.parametrize("fmt", ["dot", "mmd"])
def test_graph_matches_golden(path: Path, fmt: str) -> None:
    """Each example plan draws exactly its reviewed graph (UPDATE_GOLDEN=1 rewrites)."""
    compiled = compile_apply(loader.load(path))
    text = render_dot(compiled) if fmt == "dot" else render_mermaid(compiled)
    golden = GOLDEN / f"{path.stem}.{fmt}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_step_graph_renders_every_example(path: Path) -> None:
    """The --steps drawing has every step as a node and is byte-identical twice."""
    plan = loader.load(path)
    text = render_dot(compile_apply(plan), steps=True)
    assert text == render_dot(compile_apply(plan), steps=True)
    assert all(f'"{step.id}" [label=' in text for step in compile_apply(plan).steps)


def test_transitive_edge_is_not_drawn() -> None:
    """outer -> view is implied by outer -> inner -> view: the compiler keeps it, the drawing does not."""
    compiled = compile_apply(NESTED_BIND)
    assert ("outer", "view") in {(e.before, e.after) for e in compiled.edges}
    assert [(e.before, e.after) for e in mount_edges(compiled)] == [("outer", "inner"), ("inner", "view")]
    dot = render_dot(compiled)
    assert '"outer" -> "inner"' in dot and '"inner" -> "view"' in dot
    assert '"outer" -> "view"' not in dot
    mermaid = render_mermaid(compiled)  # m0 outer, m1 inner, m2 view
    assert "m0 -->" in mermaid and "m1 -->" in mermaid and "m0 -->|\"view" not in mermaid
    assert mermaid.count("-->") == 2


def test_destroy_graph_is_reduced_too() -> None:
    """graph --destroy draws the same reduced mount edges."""
    assert mount_edges(compile_destroy(NESTED_BIND)) == mount_edges(compile_apply(NESTED_BIND))


def test_transitive_step_edge_is_not_drawn() -> None:
    """--steps: the root's edge to inner's first step is implied through outer's chain."""
    compiled = compile_apply(NESTED_BIND)
    first = compiled.chain("inner")[0].id
    assert compiled.graph.has_edge("root:r", first)
    text = render_dot(compiled, steps=True)
    assert f'"root:r" -> "{first}";' not in text
    assert f'"{compiled.chain("outer")[-1].id}" -> "{first}";' in text


def test_node_shows_attrs_and_propagation() -> None:
    """A node names its attributes (in a fixed order) and its propagation."""
    mount = MountSpec(
        "m", "r", "t", fs_type="tmpfs", attrs=frozenset({Attr.NOEXEC, Attr.RO}), propagation=Propagation.SLAVE
    )
    bare = MountSpec("b", "r", "u", bind=BindSource(SourceRef("/srv"), recursive=False))
    compiled = compile_apply(_plan(mount, bare))
    dot = render_dot(compiled)
    assert '"m" [label="m\\nr:t\\ntmpfs\\nattrs: ro,noexec\\npropagation: slave"];' in dot
    assert '"b" [label="b\\nr:u\\nbind /srv\\nattrs: none\\npropagation: private"];' in dot
    assert 'm0["m<br/>r:t<br/>tmpfs<br/>attrs: ro,noexec<br/>propagation: slave"]' in render_mermaid(compiled)


def test_quotes_and_backslashes_in_labels_are_escaped() -> None:
    """A target with a quote or backslash cannot end the dot string or the mermaid label early."""
    compiled = compile_apply(_plan(MountSpec("q", "r", 'we"ird\\dir', fs_type="tmpfs")))
    assert 'r:we\\"ird\\\\dir' in render_dot(compiled)
    assert "r:we#quot;ird\\dir" in render_mermaid(compiled)


targets = st.lists(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map("/".join), min_size=1, max_size=10, unique=True
)


@settings(max_examples=100, deadline=None)
@given(targets)
def test_drawn_edges_keep_the_order_and_nothing_more(paths: list[str]) -> None:
    """Property: the drawn edges imply exactly the compiler's order, and none is implied by the others."""
    mounts = [MountSpec(f"m{i}", "r", p, fs_type="tmpfs") for i, p in enumerate(paths)]
    mounts.append(MountSpec("view", "r", "v", bind=BindSource(SourceRef(paths[-1] + "/x", "r"))))
    compiled = compile_apply(_plan(*mounts))
    full: nx.DiGraph[str] = nx.DiGraph([(e.before, e.after) for e in compiled.edges])
    drawn: nx.DiGraph[str] = nx.DiGraph([(e.before, e.after) for e in mount_edges(compiled)])
    full.add_nodes_from(compiled.mount_order)
    drawn.add_nodes_from(compiled.mount_order)
    assert set(nx.transitive_closure(drawn).edges) == set(nx.transitive_closure(full).edges)
    for a, b in list(drawn.edges):
        drawn.remove_edge(a, b)
        assert not nx.has_path(drawn, a, b), f"{a} -> {b} is implied by a longer path"
        drawn.add_edge(a, b)
