"""The compiler pass for planned objects: their step chains and their ordering edges with the mounts.

An object lies in whatever is mounted at its nearest planned ancestor, so it
comes after that mount; a mount on or beneath a planned directory (or on a
planned file, for a file bind) comes after it; an object inside a planned
directory comes after the directory. Destroy runs the same edges reversed.
Pure data, like the rest of the compiler: nothing here touches the kernel.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from mountplan.compile_steps import Edge, Step, StepKind
from mountplan.errors import CompileError
from mountplan.model import ObjectKind, ObjectSpec, Plan

__all__ = ["object_apply_chains", "object_destroy_chains", "object_edges"]


def _ancestors(path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


def object_edges(plan: Plan) -> Iterator[Edge]:
    """Ordering edges between objects and mounts (and between objects); CompileError for impossible ones."""
    mounts = {(m.root, m.target): m.name for m in plan.mounts}
    objects: dict[tuple[str, str], ObjectSpec] = {}
    for obj in plan.objects:
        key = (obj.root, obj.path)
        if key in objects:
            raise CompileError(f"objects {objects[key].name!r} and {obj.name!r} both have path {obj.root}:{obj.path}")
        objects[key] = obj
        if key in mounts and obj.kind is ObjectKind.SYMLINK:
            raise CompileError(f"mount {mounts[key]!r} targets {obj.root}:{obj.path}, where object {obj.name!r} is a symlink")
    for obj in plan.objects:
        for parent in _ancestors(obj.path):
            # The nearest planned ancestor decides: a mount there holds the object
            # (even over a planned directory at the same path, which the mount covers).
            mount = mounts.get((obj.root, parent))
            if mount is not None:
                yield Edge(mount, obj.name, f"{obj.name}'s path lies in {mount}")
                break
            holder = objects.get((obj.root, parent))
            if holder is not None:
                if holder.kind is not ObjectKind.DIRECTORY:
                    raise CompileError(f"object {obj.name!r} lies beneath {holder.name!r}, a {holder.kind.value}")
                yield Edge(holder.name, obj.name, f"{obj.name}'s path lies in directory {holder.name}")
                break
    for m in plan.mounts:
        for path in (m.target, *_ancestors(m.target)):
            holder = objects.get((m.root, path))
            if holder is not None:
                if holder.kind is not ObjectKind.DIRECTORY and path != m.target:
                    raise CompileError(f"mount {m.name!r} lies beneath {holder.name!r}, a {holder.kind.value}")
                yield Edge(holder.name, m.name, f"{m.name}'s target is {'planned' if path == m.target else 'in planned'} "
                           f"{holder.kind.value} {holder.name}")
                break
            if path != m.target and (m.root, path) in mounts:
                break  # the nesting pass orders it after that mount, which orders the rest


_Args = tuple[tuple[str, str], ...]


def object_apply_chains(objects: tuple[ObjectSpec, ...]) -> dict[str, list[Step]]:
    """Each object's apply steps: resolve_parent, then mkdirat / openat_create / symlinkat, fchown, fchmod."""
    chains: dict[str, list[Step]] = {}
    for obj in objects:
        target: _Args = (("target", f"{obj.root}:{obj.path}"),)
        kinds: list[tuple[StepKind, _Args]] = [(StepKind.RESOLVE_PARENT, target)]
        if obj.kind is ObjectKind.SYMLINK:
            kinds.append((StepKind.SYMLINKAT, (("link", str(obj.link)),)))
        else:
            mode: _Args = (("mode", f"{obj.mode:04o}"),) if obj.mode is not None else ()
            kinds.append((StepKind.MKDIRAT if obj.kind is ObjectKind.DIRECTORY else StepKind.CREATE_FILE, mode))
            if obj.uid is not None or obj.gid is not None:
                owner = (("uid", str(-1 if obj.uid is None else obj.uid)), ("gid", str(-1 if obj.gid is None else obj.gid)))
                kinds.append((StepKind.FCHOWN, owner))
            if obj.mode is not None:
                kinds.append((StepKind.FCHMOD, mode))
        chains[obj.name] = [
            Step(f"{obj.name}#{i:02d}:{kind.value}", kind, obj.name, obj.root, args) for i, (kind, args) in enumerate(kinds)
        ]
    return chains


def object_destroy_chains(objects: tuple[ObjectSpec, ...]) -> dict[str, list[Step]]:
    """Each object's destroy step: unlinkat, only if it is still the inode apply made."""
    return {
        obj.name: [
            Step(f"{obj.name}#00:unlinkat", StepKind.UNLINKAT, obj.name, obj.root,
                 (("target", f"{obj.root}:{obj.path}"), ("kind", obj.kind.value)))
        ]
        for obj in objects
    }
