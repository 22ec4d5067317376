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
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mountplan.compile_objects import object_apply_chains, object_destroy_chains, object_edges
from mountplan.errors import CompileError
from mountplan.model import Attr, MountSpec, Option, Plan, Propagation, render_ranges

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


class StepKind(enum.Enum):
    """One step at syscall granularity. ``mutating`` steps change the kernel or disk."""

    OPEN_ROOT = "open_root"
    FSOPEN = "fsopen"
    FSCONFIG = "fsconfig"
    CREATE = "fsconfig_create"
    FSMOUNT = "fsmount"
    OPEN_TREE = "open_tree"
    #: a user namespace for an idmapped bind: made with the planned maps (fork + unshare), or opened
    USERNS = "userns"
    SET_ATTR = "mount_setattr"
    ENSURE_MOUNTPOINT = "mkdir"
    RESOLVE_TARGET = "resolve_target"
    #: statx of the detached mount's id (+ clone ids, root evidence), journaled before attaching
    JOURNAL_ID = "journal_id"
    MOVE_MOUNT = "move_mount"
    #: look the target up again beneath the root: the mount must be ours, else detach it by its fd
    VERIFY = "verify_beneath"
    SET_PROPAGATION = "set_propagation"
    UNMOUNT = "unmount"
    REMOVE_MOUNTPOINT = "rmdir"
    #: planned objects (compile_objects.py): open the parent beneath the root, making missing directories
    RESOLVE_PARENT = "resolve_parent"
    MKDIRAT = "mkdirat"
    CREATE_FILE = "openat_create"
    SYMLINKAT = "symlinkat"
    FCHOWN = "fchown"
    FCHMOD = "fchmod"
    #: remove a planned object, only if it is still the inode apply made
    UNLINKAT = "unlinkat"

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
        StepKind.RESOLVE_PARENT,
        StepKind.MKDIRAT,
        StepKind.CREATE_FILE,
        StepKind.SYMLINKAT,
        StepKind.FCHOWN,
        StepKind.FCHMOD,
        StepKind.UNLINKAT,
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
    steps: tuple[Step, ...]
    #: Run order of the plan's mounts and objects (names; objects only when the plan has some).
    mount_order: tuple[str, ...]
    edges: tuple[Edge, ...]
    _chains: dict[str, list[Step]] = field(default_factory=dict, compare=False, repr=False)
    _by_id: dict[str, Step] = field(default_factory=dict, compare=False, repr=False)
    #: What _step_graph needs, kept until the graph is first asked for.
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
                self._graph.append(_step_graph(*self._graph_parts))
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


# --------------------------------------------------------------------------- chains

_Args = tuple[tuple[str, str], ...]
_Head = list[tuple[str, StepKind, _Args]]  # (id suffix, kind, args) per step


def _apply_chains(mounts: tuple[MountSpec, ...]) -> dict[str, list[Step]]:
    """Each mount's apply steps by mount name (a repeated name keeps the last).

    A filesystem mount starts fsopen, fsconfig ``source=``, one fsconfig per option,
    fsconfig_create, fsmount; a bind starts open_tree, mount_setattr; both end
    mkdir, resolve_target, move_mount, set_propagation.
    """
    # Mounts mostly repeat their fs type, options, attrs, mode and propagation:
    # build each distinct filesystem head (id suffixes, kinds, args) and argument
    # tuple once, not once per mount, which also leaves the cyclic collector
    # fewer tuples to scan.
    chains: dict[str, list[Step]] = {}
    attrs_args: dict[frozenset[Attr], _Args] = {}
    filesystem_heads: dict[tuple[str | None, str | None, tuple[Option, ...], frozenset[Attr]], _Head] = {}
    tail_suffixes: dict[int, tuple[str, ...]] = {}
    mode_args: dict[int, _Args] = {}
    propagation_args: dict[Propagation, _Args] = {}
    for m in mounts:
        attrs = attrs_args.get(m.attrs)
        if attrs is None:
            attrs = attrs_args[m.attrs] = (("attrs", ",".join(sorted(a.value for a in m.attrs)) or "-"),)
        head: _Head | None
        if m.bind is None:
            key = (m.fs_type, m.source, m.options, m.attrs)
            head = filesystem_heads.get(key)
            if head is None:
                head = filesystem_heads[key] = _filesystem_head(m, attrs)
        else:
            source = (("source", m.bind.source.render()), ("recursive", str(m.bind.recursive).lower()))
            head = [
                ("#00:open_tree", StepKind.OPEN_TREE, source),
                ("#01:mount_setattr", StepKind.SET_ATTR, attrs),
            ]
            if m.bind.idmap is not None:
                head = _idmap_head(m, source, attrs)
        tail = tail_suffixes.get(len(head))
        if tail is None:
            tail = tail_suffixes[len(head)] = _tail_suffixes(len(head))
        mode = mode_args.get(m.mountpoint.mode)
        if mode is None:
            mode = mode_args[m.mountpoint.mode] = (("mode", oct(m.mountpoint.mode)),)
        propagation = propagation_args.get(m.propagation)
        if propagation is None:
            propagation = propagation_args[m.propagation] = (("propagation", m.propagation.value),)
        name, root = m.name, m.root
        target = (("target", f"{root}:{m.target}"),)
        chain = [_new_step(name + suffix, kind, name, root, args) for suffix, kind, args in head]
        chain.append(_new_step(name + tail[0], StepKind.ENSURE_MOUNTPOINT, name, root, target + mode))
        chain.append(_new_step(name + tail[1], StepKind.RESOLVE_TARGET, name, root, target))
        chain.append(_new_step(name + tail[2], StepKind.JOURNAL_ID, name, root, ()))
        chain.append(_new_step(name + tail[3], StepKind.MOVE_MOUNT, name, root, target))
        chain.append(_new_step(name + tail[4], StepKind.VERIFY, name, root, target))
        chain.append(_new_step(name + tail[5], StepKind.SET_PROPAGATION, name, root, propagation))
        chains[name] = chain
    return chains


def _idmap_head(m: MountSpec, source: _Args, attrs: _Args) -> _Head:
    """userns, open_tree, then one mount_setattr that sets the attributes and ``MOUNT_ATTR_IDMAP`` on the clone.

    The mapping is set on the detached clone, before move_mount: the kernel
    refuses it on an attached mount and on one already idmapped.
    """
    assert m.bind is not None and m.bind.idmap is not None
    idmap = m.bind.idmap
    if idmap.userns is not None:
        userns: _Args = (("userns", idmap.userns),)
    else:
        userns = (("uid_map", render_ranges(idmap.uids)), ("gid_map", render_ranges(idmap.gids)))
    return [
        ("#00:userns", StepKind.USERNS, userns),
        ("#01:open_tree", StepKind.OPEN_TREE, source),
        ("#02:mount_setattr", StepKind.SET_ATTR, (*attrs, ("idmap", "userns"))),
    ]


def _filesystem_head(m: MountSpec, attrs: _Args) -> _Head:
    assert m.fs_type is not None
    kinds_args: list[tuple[StepKind, _Args]] = [
        (StepKind.FSOPEN, (("type", m.fs_type),)),
        (StepKind.FSCONFIG, (("option", f"source={m.source or m.fs_type}"),)),
        *((StepKind.FSCONFIG, (("option", opt.render()),)) for opt in m.options),
        (StepKind.CREATE, ()),
        (StepKind.FSMOUNT, attrs),
    ]
    return [(f"#{i:02d}:{kind.value}", kind, args) for i, (kind, args) in enumerate(kinds_args)]


def _tail_suffixes(start: int) -> tuple[str, ...]:
    kinds = (
        StepKind.ENSURE_MOUNTPOINT,
        StepKind.RESOLVE_TARGET,
        StepKind.JOURNAL_ID,
        StepKind.MOVE_MOUNT,
        StepKind.VERIFY,
        StepKind.SET_PROPAGATION,
    )
    return tuple(f"#{i:02d}:{kind.value}" for i, kind in enumerate(kinds, start))


# A frozen dataclass's __init__ stores each field with object.__setattr__, paying
# a global and an attribute lookup per field; the slots' own descriptors make the
# same stores for a third of the cost, and 10,000 mounts are 87,000 steps. Steps
# stay frozen to everyone else.
_set_step_id: Callable[[Step, str], None] = Step.__dict__["id"].__set__
_set_step_kind: Callable[[Step, StepKind], None] = Step.__dict__["kind"].__set__
_set_step_mount: Callable[[Step, str | None], None] = Step.__dict__["mount"].__set__
_set_step_root: Callable[[Step, str], None] = Step.__dict__["root"].__set__
_set_step_args: Callable[[Step, _Args], None] = Step.__dict__["args"].__set__


def _new_step(id: str, kind: StepKind, mount: str | None, root: str, args: _Args) -> Step:
    """Exactly ``Step(id, kind, mount, root, args)``, built faster (see above)."""
    step = object.__new__(Step)
    _set_step_id(step, id)
    _set_step_kind(step, kind)
    _set_step_mount(step, mount)
    _set_step_root(step, root)
    _set_step_args(step, args)
    return step


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


def compile_apply(plan: Plan) -> CompiledPlan:
    """Build the apply graph: per-mount chains joined by ordering edges."""
    with _no_gc():
        order, edges = mount_order(plan)
        chains = _apply_chains(plan.mounts)
        if plan.objects:
            chains.update(object_apply_chains(plan.objects))
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
            _new_step(f"{m.name}#00:unmount", StepKind.UNMOUNT, m.name, m.root, target),
            _new_step(f"{m.name}#01:rmdir", StepKind.REMOVE_MOUNTPOINT, m.name, m.root, target),
        ]
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
    roots = [_root_step(r) for r in sorted({m.root for m in plan.mounts} | {o.root for o in plan.objects})]
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


def _step_graph(
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
    """``_step_graph`` through networkx's public calls, for step ids that repeat."""
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
