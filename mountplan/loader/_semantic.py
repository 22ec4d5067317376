"""Semantic checks: what the schema cannot say (names, roots, targets, ordering, the kernel)."""

from __future__ import annotations

import functools
import os
from collections import deque
from typing import Any

from mountplan.loader._control import CONTROL_CHARACTER
from mountplan.loader._idmap import check_idmap
from mountplan.loader._schema import FS_TYPE_RE, target_pattern
from mountplan.loader._yaml import Document, Path, Position
from mountplan.loader.diagnostics import Diagnostic, Severity, did_you_mean
from mountplan.model import ATIME_ATTRS, OVERLAY_PATH_KEYS, normalize_target

__all__ = ["check_semantics", "effective_root", "is_known_filesystem", "kernel_filesystems"]

_ATIME_NAMES = frozenset(attr.value for attr in ATIME_ATTRS)


def kernel_filesystems() -> frozenset[str] | None:
    """Filesystem types the running kernel has registered (second column of /proc/filesystems)."""
    try:
        with open("/proc/filesystems", encoding="utf-8") as file:
            text = file.read()
    except OSError:
        return None
    return frozenset(line.split()[-1] for line in text.splitlines() if line.strip())


@functools.cache
def _module_filesystems() -> frozenset[str]:
    # The kernel loads a filesystem module on first use (request_module("fs-%s")), so a
    # type absent from /proc/filesystems is still known when a module alias provides it.
    path = f"/lib/modules/{os.uname().release}/modules.alias"
    names: set[str] = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("alias fs-"):
                    names.add(line.split()[1][len("fs-") :])
    except OSError:
        pass
    return frozenset(names)


def is_known_filesystem(fs_type: str, known: frozenset[str] | None) -> bool | None:
    """Whether ``fs_type`` is in ``known`` or has a module (None when ``known`` is None: no /proc)."""
    if known is None:
        return None
    base = fs_type.split(".", 1)[0]  # "fuse.sshfs" is the fuse type with a subtype
    return base in known or base in _module_filesystems()


def effective_root(data: dict[str, Any], mount: dict[str, Any]) -> str | None:
    """The root a mount belongs to: its own, else ``defaults.root``, else the only root."""
    root = mount.get("root")
    if isinstance(root, str):
        return root
    defaults = data.get("defaults")
    if isinstance(defaults, dict) and isinstance(defaults.get("root"), str):
        root_name: str = defaults["root"]
        return root_name
    roots = data.get("roots")
    if isinstance(roots, dict) and len(roots) == 1:
        return str(next(iter(roots)))
    return None


class _Checker:
    def __init__(self, doc: Document, filename: str, strict_kernel: bool) -> None:
        self.doc = doc
        self.filename = filename
        self.strict_kernel = strict_kernel
        self.diagnostics: list[Diagnostic] = []
        self.fs_types: dict[str, bool | None] = {}
        self.kernel_filesystems: frozenset[str] | None = None
        data = doc.data if isinstance(doc.data, dict) else {}
        self.data: dict[str, Any] = data
        roots = data.get("roots")
        self.roots: list[str] = list(roots) if isinstance(roots, dict) else []
        mounts = data.get("mounts")
        self.mounts: list[tuple[int, dict[str, Any]]] = (
            [(i, m) for i, m in enumerate(mounts) if isinstance(m, dict)] if isinstance(mounts, list) else []
        )

    def report(self, pos: Position, message: str, severity: Severity = Severity.ERROR) -> None:
        self.diagnostics.append(Diagnostic(self.filename, pos.line, pos.col, severity, message))

    def label(self, index: int, mount: dict[str, Any]) -> str:
        name = mount.get("name")
        return f"mount {name!r}" if isinstance(name, str) else f"mount #{index + 1}"

    def check_root_name(self, path: Path, name: object) -> None:
        if isinstance(name, str) and self.roots and name not in self.roots:
            self.report(
                self.doc.value_position(path),
                f"unknown root {name!r}{did_you_mean(name, self.roots) or self.known_roots()}",
            )

    def known_roots(self) -> str:
        return "; the plan's roots are " + ", ".join(repr(root) for root in self.roots)

    def run(self) -> list[Diagnostic]:
        defaults = self.data.get("defaults")
        if isinstance(defaults, dict):
            self.check_root_name(("defaults", "root"), defaults.get("root"))
            self.check_atime(("defaults", "attrs"), defaults.get("attrs"), "'defaults.attrs'")
        names: dict[str, int] = {}
        targets: dict[tuple[str, str], str] = {}
        for index, mount in self.mounts:
            base: Path = ("mounts", index)
            label = self.label(index, mount)
            name = mount.get("name")
            if isinstance(name, str):
                if name in names:
                    first = self.doc.value_position(("mounts", names[name], "name"))
                    self.report(
                        self.doc.value_position((*base, "name")),
                        f"duplicate mount name {name!r} (first used at line {first.line})",
                    )
                else:
                    names[name] = index
            self.check_root_name((*base, "root"), mount.get("root"))
            root = effective_root(self.data, mount)
            if root is None and len(self.roots) > 1:
                self.report(
                    self.doc.value_position(base),
                    f"{label} has no root; set 'root' on it or 'defaults.root'{self.known_roots()}",
                )
            self.check_target(base, label, root, mount.get("target"), targets)
            self.check_bind(base, mount.get("bind"))
            bind = mount.get("bind")
            if isinstance(bind, dict) and isinstance(bind.get("idmap"), dict):
                check_idmap(self.doc, (*base, "bind", "idmap"), label, bind["idmap"], self.report)
            self.check_filesystem(base, label, root, mount)
            self.check_atime((*base, "attrs"), mount.get("attrs"), f"'attrs' of {label}")
        self.check_after(names)
        if "objects" in self.data or "devices" in self.data:
            from mountplan.loader._objects import check_objects

            check_objects(self, names, targets)
        return self.diagnostics

    def check_target(
        self, base: Path, label: str, root: str | None, target: object, seen: dict[tuple[str, str], str]
    ) -> None:
        if not isinstance(target, str) or not target or target_pattern().search(target) is None:
            return  # the schema reported it
        pos = self.doc.value_position((*base, "target"))
        try:
            norm = normalize_target(target)
        except ValueError as exc:
            self.report(pos, str(exc))
            return
        if root is None:
            return
        first = seen.setdefault((root, norm), label)
        if first != label:
            self.report(pos, f"{label} has the same target {norm!r} in root {root!r} as {first}")

    def check_bind(self, base: Path, bind: object) -> None:
        if not isinstance(bind, dict) or not isinstance(bind.get("path"), str) or not bind["path"]:
            return
        if CONTROL_CHARACTER.search(bind["path"]):
            return  # the YAML layer reported it
        path: str = bind["path"]
        root = bind.get("root")
        pos = self.doc.value_position((*base, "bind", "path"))
        if root is None:
            if not path.startswith("/"):
                self.report(
                    pos,
                    f"bind source {path!r} must be an absolute host path, "
                    "or set 'root' to take it from beneath a root",
                )
            return
        self.check_root_name((*base, "bind", "root"), root)
        problem = _relative_path_problem(path)
        if problem:
            self.report(
                pos,
                f"bind source {path!r} {problem}; with 'root' it must be a relative path beneath root {root!r}",
            )

    def check_filesystem(self, base: Path, label: str, root: str | None, mount: dict[str, Any]) -> None:
        fs_type = mount.get("type")
        if not isinstance(fs_type, str) or FS_TYPE_RE.search(fs_type) is None:
            return  # the schema reported it
        mountpoint = mount.get("mountpoint")
        if isinstance(mountpoint, dict) and mountpoint.get("kind") == "file" and "bind" not in mount:
            self.report(
                self.doc.value_position((*base, "mountpoint", "kind")),
                f"{label} is a {fs_type} filesystem and needs a directory mountpoint; "
                "kind 'file' is for bind mounts",
            )
        if fs_type not in self.fs_types:
            if not self.fs_types:
                self.kernel_filesystems = kernel_filesystems()
            self.fs_types[fs_type] = is_known_filesystem(fs_type, self.kernel_filesystems)
        if self.fs_types[fs_type] is False:
            known = self.kernel_filesystems or frozenset()
            self.report(
                self.doc.value_position((*base, "type")),
                f"unknown filesystem type {fs_type!r}: the running kernel does not list it in "
                f"/proc/filesystems{did_you_mean(fs_type, known)}",
                Severity.ERROR if self.strict_kernel else Severity.WARNING,
            )
        options = mount.get("options")
        if fs_type != "overlay" or not isinstance(options, dict):
            return
        for key, value in options.items():
            if key not in OVERLAY_PATH_KEYS:
                continue
            values = value if isinstance(value, list) else [value]
            for index, item in enumerate(values):
                if not isinstance(item, str) or CONTROL_CHARACTER.search(item):
                    continue  # the schema or the YAML layer reported it
                parts = item.split(":") if key == "lowerdir" else [item]
                for part in parts:
                    problem = "" if part.startswith("/") else _relative_path_problem(part)
                    if problem:
                        path: Path = (
                            (*base, "options", key, index)
                            if isinstance(value, list)
                            else (*base, "options", key)
                        )
                        self.report(
                            self.doc.value_position(path),
                            f"overlay layer {part!r} in option {key!r} of {label} {problem}; "
                            "a relative layer must lie beneath " + (f"root {root!r}" if root else "its root"),
                        )

    def check_atime(self, path: Path, attrs: object, where: str) -> None:
        if not isinstance(attrs, list):
            return
        first: str | None = None
        for index, attr in enumerate(attrs):
            if not isinstance(attr, str) or attr not in _ATIME_NAMES:
                continue
            if first is None:
                first = attr
            elif attr != first:
                self.report(
                    self.doc.value_position((*path, index)),
                    f"conflicting attributes {first!r} and {attr!r} in {where}: "
                    "both set the atime mode; keep one",
                )

    def check_after(self, names: dict[str, int]) -> None:
        edges: dict[str, list[str]] = {}
        for index, mount in self.mounts:
            after = mount.get("after")
            name = mount.get("name")
            if not isinstance(after, list) or not isinstance(name, str) or names.get(name) != index:
                continue
            targets: list[str] = []
            for position, other in enumerate(after):
                if not isinstance(other, str):
                    continue
                if other in names:
                    if other not in targets:
                        targets.append(other)
                    continue
                self.report(
                    self.doc.value_position(("mounts", index, "after", position)),
                    f"'after' of mount {name!r} names unknown mount {other!r}{did_you_mean(other, names)}",
                )
            if targets:
                edges[name] = sorted(targets)
        for cycle in _find_cycles(edges):
            start, following = cycle[0], cycle[1]
            index = names[start]
            position = self.data["mounts"][index]["after"].index(following)
            self.report(
                self.doc.value_position(("mounts", index, "after", position)),
                "cycle in 'after': " + " -> ".join(cycle),
            )


def _relative_path_problem(path: str) -> str:
    """Why ``path`` cannot be a path beneath a root ('' when it can)."""
    if path.startswith("/"):
        return "is absolute"
    if ".." in path.split("/"):
        return "climbs out with '..'"
    if os.path.normpath(path) == ".":
        return "names the root itself"
    return ""


def _find_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component, each from its smallest name, shortest first."""
    cycles: list[list[str]] = []
    for component in _strongly_connected(edges):
        start = min(component)
        if len(component) == 1 and start not in edges.get(start, ()):
            continue
        cycles.append(_shortest_cycle(edges, start, component))
    return sorted(cycles)


def _strongly_connected(edges: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative so that a 10,000-mount chain cannot overflow the stack."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, next_child = work.pop()
            if next_child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            children = edges.get(node, [])
            descended = False
            for position in range(next_child, len(children)):
                child = children[position]
                if child not in index:
                    work.append((node, position + 1))
                    work.append((child, 0))
                    descended = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if descended:
                continue
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _shortest_cycle(edges: dict[str, list[str]], start: str, component: set[str]) -> list[str]:
    parents: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in edges.get(node, []):
            if target == start:
                path = [start]
                while node != start:
                    path.append(node)
                    node = parents[node]
                return [start, *reversed(path[1:]), start]
            if target in component and target not in parents:
                parents[target] = node
                queue.append(target)
    raise AssertionError("a strongly connected component always has a cycle")


def check_semantics(doc: Document, filename: str, *, strict_kernel: bool) -> list[Diagnostic]:
    """Every semantic problem in ``doc``; tolerates documents the schema rejected."""
    return _Checker(doc, filename, strict_kernel).run()
