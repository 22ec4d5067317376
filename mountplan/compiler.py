"""Compile a Plan into a networkx DAG of new-mount-API steps.

The graph is built by small named passes (terraform style): one chain of steps
per mount, then ordering edges between chains (nesting, sources, ``after``).
Nothing here touches the kernel; whether a mountpoint exists, or a bind source is
a file, is decided when the ``ensure_mountpoint`` step runs.

Step order is deterministic: a lexicographic topological sort keyed by plan
order, so the same plan always yields byte-identical output.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import networkx as nx

from mountplan.errors import CompileError
from mountplan.model import MountKind, MountSpec, Plan

__all__ = [
    "CompiledPlan",
    "Edge",
    "Step",
    "StepKind",
    "compile_apply",
    "compile_destroy",
    "mount_order",
    "render_dot",
    "render_mermaid",
]


class StepKind(enum.Enum):
    """One step at syscall granularity. ``mutating`` steps change the kernel or disk."""

    OPEN_ROOT = "open_root"
    FSOPEN = "fsopen"
    FSCONFIG = "fsconfig"
    CREATE = "fsconfig_create"
    FSMOUNT = "fsmount"
    OPEN_TREE = "open_tree"
    SET_ATTR = "mount_setattr"
    ENSURE_MOUNTPOINT = "mkdir"
    RESOLVE_TARGET = "resolve_target"
    MOVE_MOUNT = "move_mount"
    SET_PROPAGATION = "set_propagation"
    UNMOUNT = "unmount"
    REMOVE_MOUNTPOINT = "rmdir"

    @property
    def mutating(self) -> bool:
        return self in _MUTATING


_MUTATING = frozenset(
    {
        StepKind.ENSURE_MOUNTPOINT,
        StepKind.MOVE_MOUNT,
        StepKind.SET_PROPAGATION,
        StepKind.UNMOUNT,
        StepKind.REMOVE_MOUNTPOINT,
    }
)


@dataclass(frozen=True, slots=True)
class Step:
    """A node of the step graph. ``args`` are shown in ``plan --steps``."""

    id: str
    kind: StepKind
    mount: str | None
    root: str
    args: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args)
        who = self.mount if self.mount is not None else f"root {self.root}"
        return f"{self.kind.value:<16} {who}{'  ' + args if args else ''}"

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "mount": self.mount,
            "root": self.root,
            "args": dict(self.args),
        }


@dataclass(frozen=True, slots=True)
class Edge:
    """Why one mount must come before another (shown in cycle reports and graphs)."""

    before: str
    after: str
    reason: str


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """The step graph plus its deterministic order."""

    plan: Plan
    graph: nx.DiGraph[str] = field(compare=False)
    steps: tuple[Step, ...]
    mount_order: tuple[str, ...]
    edges: tuple[Edge, ...]
    _chains: dict[str, list[Step]] = field(default_factory=dict, compare=False, repr=False)
    _by_id: dict[str, Step] = field(default_factory=dict, compare=False, repr=False)

    def chain(self, mount: str) -> tuple[Step, ...]:
        """The steps of one mount, in order."""
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


# --------------------------------------------------------------------------- passes


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
    """Order the plan's mounts; raise CompileError naming a cycle with its reasons."""
    _check_targets(plan.mounts)
    edges: dict[tuple[str, str], Edge] = {}
    for edge in (*_nesting_edges(plan.mounts), *_source_edges(plan.mounts), *_after_edges(plan.mounts)):
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
        raise CompileError(_describe_cycle(graph, edges)) from None
    return order, tuple(edges[k] for k in sorted(edges, key=lambda k: (index[k[0]], index[k[1]])))


def _describe_cycle(graph: nx.DiGraph[str], edges: dict[tuple[str, str], Edge]) -> str:
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


# --------------------------------------------------------------------------- chains


def _mount_chain(m: MountSpec) -> list[tuple[StepKind, tuple[tuple[str, str], ...]]]:
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
        chain.append(
            (
                StepKind.OPEN_TREE,
                (("source", m.bind.source.render()), ("recursive", str(m.bind.recursive).lower())),
            )
        )
        chain.append((StepKind.SET_ATTR, (("attrs", attrs),)))
    chain.append((StepKind.ENSURE_MOUNTPOINT, target + (("mode", oct(m.mountpoint.mode)),)))
    chain.append((StepKind.RESOLVE_TARGET, target))
    chain.append((StepKind.MOVE_MOUNT, target))
    chain.append((StepKind.SET_PROPAGATION, (("propagation", m.propagation.value),)))
    return chain


def _root_step(root: str) -> Step:
    return Step(id=f"root:{root}", kind=StepKind.OPEN_ROOT, mount=None, root=root)


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


_KIND_NAMES = {kind: kind.value for kind in StepKind}


def compile_apply(plan: Plan) -> CompiledPlan:
    """Build the apply graph: per-mount chains joined by ordering edges."""
    with _no_gc():
        order, edges = mount_order(plan)
        chains: dict[str, list[Step]] = {}
        names = _KIND_NAMES
        for m in plan.mounts:
            chains[m.name] = [
                Step(id=f"{m.name}#{i:02d}:{names[kind]}", kind=kind, mount=m.name, root=m.root, args=args)
                for i, (kind, args) in enumerate(_mount_chain(m))
            ]
        return _assemble(plan, chains, order, edges, reverse=False)


def compile_destroy(plan: Plan) -> CompiledPlan:
    """The destroy graph: the apply order reversed, unmount then remove mountpoints."""
    with _no_gc():
        return _compile_destroy(plan)


def _compile_destroy(plan: Plan) -> CompiledPlan:
    order, edges = mount_order(plan)
    chains: dict[str, list[Step]] = {}
    for m in plan.mounts:
        target = (("target", f"{m.root}:{m.target}"),)
        chains[m.name] = [
            Step(f"{m.name}#00:unmount", StepKind.UNMOUNT, m.name, m.root, target),
            Step(f"{m.name}#01:rmdir", StepKind.REMOVE_MOUNTPOINT, m.name, m.root, target),
        ]
    return _assemble(plan, chains, tuple(reversed(order)), edges, reverse=True)


def _assemble(
    plan: Plan,
    chains: dict[str, list[Step]],
    order: tuple[str, ...],
    edges: tuple[Edge, ...],
    *,
    reverse: bool,
) -> CompiledPlan:
    roots = [_root_step(r) for r in sorted({m.root for m in plan.mounts})]
    # Nodes are step ids; the Step objects live in CompiledPlan.steps/by_id.
    # networkx's per-node attribute merge would cost ~0.5 s for 90,000 steps.
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(r.id for r in roots)
    links: list[tuple[str, str]] = []
    for m in plan.mounts:
        ids = [s.id for s in chains[m.name]]
        graph.add_nodes_from(ids)
        links.append((f"root:{m.root}", ids[0]))
        links.extend(zip(ids, ids[1:]))
    graph.add_edges_from(links)
    for edge in edges:
        before, after = (edge.after, edge.before) if reverse else (edge.before, edge.after)
        graph.add_edge(chains[before][-1].id, chains[after][0].id, reason=edge.reason)
    # Chains are linear and inter-chain edges run from the end of one chain to
    # the start of another, so chains expanded in mount order are a topological
    # order of the step graph; sorting ~8 steps a mount through networkx would
    # cost seconds for 10,000 mounts.
    steps = list(roots)
    for name in order:
        steps.extend(chains[name])
    return CompiledPlan(plan=plan, graph=graph, steps=tuple(steps), mount_order=order, edges=edges)


# --------------------------------------------------------------------------- rendering


def _mount_label(m: MountSpec) -> str:
    what = m.fs_type if m.kind is MountKind.FILESYSTEM else f"bind {m.bind.source.render()}"  # type: ignore[union-attr]
    return f"{m.name}\\n{m.root}:{m.target}\\n{what}"


def render_dot(compiled: CompiledPlan, *, steps: bool = False) -> str:
    """Graphviz text: mounts and their ordering edges (or every step with ``steps``)."""
    lines = [f"digraph {json.dumps(compiled.plan.name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    if steps:
        for step in compiled.steps:
            lines.append(f"  {json.dumps(step.id)} [label={json.dumps(step.render())}];")
        for a, b in sorted(compiled.graph.edges):
            lines.append(f"  {json.dumps(a)} -> {json.dumps(b)};")
    else:
        for name in compiled.mount_order:
            label = _mount_label(compiled.plan.mount(name))
            lines.append(f'  {json.dumps(name)} [label="{label}"];')
        for edge in compiled.edges:
            lines.append(f"  {json.dumps(edge.before)} -> {json.dumps(edge.after)} [label={json.dumps(edge.reason)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_id(name: str, ids: dict[str, str]) -> str:
    return ids.setdefault(name, f"m{len(ids)}")


def render_mermaid(compiled: CompiledPlan) -> str:
    """Mermaid flowchart of the mounts and why each edge exists (renders in code review)."""
    ids: dict[str, str] = {}
    lines = ["flowchart TD"]
    for name in compiled.mount_order:
        m = compiled.plan.mount(name)
        label = _mount_label(m).replace("\\n", "<br/>").replace('"', "#quot;")
        lines.append(f'  {_mermaid_id(name, ids)}["{label}"]')
    for edge in compiled.edges:
        reason = edge.reason.replace('"', "#quot;")
        lines.append(f'  {_mermaid_id(edge.before, ids)} -->|"{reason}"| {_mermaid_id(edge.after, ids)}')
    return "\n".join(lines) + "\n"

