"""The step compiler: deterministic order, ordering edges, cycle reports, renderings."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mountplan import loader
from mountplan.compiler import compile_apply, compile_destroy
from mountplan.errors import CompileError
from mountplan.model import BindSource, MountSpec, Plan, RootSpec, SourceRef

PLANS = sorted((Path(__file__).parents[2] / "plans").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"


def _plan(*mounts: MountSpec) -> Plan:
    return Plan(name="t", roots=(RootSpec("r"),), mounts=mounts)


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_transcript_matches_golden(path: Path) -> None:
    """Each example plan compiles to exactly its reviewed transcript (UPDATE_GOLDEN=1 rewrites)."""
    import os

    text = "\n".join(compile_apply(loader.load(path)).transcript()) + "\n"
    golden = GOLDEN / f"{path.stem}.steps"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_nested_target_and_source_edges() -> None:
    """Parents mount before children; a bind follows the mount holding its source."""
    plan = _plan(
        MountSpec("view", "r", "view", bind=BindSource(SourceRef("data/x", "r"))),
        MountSpec("inner", "r", "a/b", fs_type="tmpfs"),
        MountSpec("data", "r", "data", fs_type="tmpfs"),
        MountSpec("outer", "r", "a", fs_type="tmpfs"),
    )
    order = compile_apply(plan).mount_order
    assert order.index("outer") < order.index("inner")
    assert order.index("data") < order.index("view")
    assert compile_destroy(plan).mount_order == tuple(reversed(order))


def test_cycle_is_reported_with_both_names_and_reasons() -> None:
    """A source hidden by a mount that must come after it is a cycle naming both mounts."""
    plan = _plan(
        MountSpec("b", "r", "x/inner", fs_type="tmpfs", after=("a",)),
        MountSpec("a", "r", "a", bind=BindSource(SourceRef("x/inner/src", "r"))),
    )
    with pytest.raises(CompileError) as info:
        compile_apply(plan)
    text = str(info.value)
    assert text.startswith("cycle between mounts: a -> b (b is declared after a); b -> a (a's source r:x/inner/src")


def test_two_mounts_on_one_target() -> None:
    """Two mounts on one target are a compile error naming both."""
    with pytest.raises(CompileError, match="'a' and 'b' both target r:t"):
        compile_apply(_plan(MountSpec("a", "r", "t", fs_type="tmpfs"), MountSpec("b", "r", "t", fs_type="ramfs")))


targets = st.lists(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map("/".join), min_size=1, max_size=12, unique=True
)


@settings(max_examples=150, deadline=None)
@given(targets)
def test_step_order_respects_every_edge(paths: list[str]) -> None:
    """Property: the step order is a topological order of the step graph, and stable."""
    mounts = tuple(MountSpec(f"m{i}", "r", p, fs_type="tmpfs") for i, p in enumerate(paths))
    compiled = compile_apply(_plan(*mounts))
    position = {s.id: i for i, s in enumerate(compiled.steps)}
    assert set(position) == set(compiled.graph.nodes)
    for a, b in compiled.graph.edges:
        assert position[a] < position[b]
    assert nx.is_directed_acyclic_graph(compiled.graph)
    assert compiled.steps == compile_apply(_plan(*mounts)).steps
