"""Change sets for planned objects: classify each against what the state recorded and what is on disk now.

Pure data in, data out, like :mod:`mountplan.changes`: the engine observes each
object's path beneath its root and passes an :class:`ObservedObject` here.

``+`` missing, ``~`` a directory or file of ours whose mode or owner drifted
(fchmod/fchown in place), ``-/+`` a symlink of ours whose text differs or an
object of ours whose kind changed (it cannot be fixed in place), ``-`` ours and
no longer planned (with prune). Something mountplan did not make at a planned
path is never replaced: it is a problem, and apply fails on it (EEXIST).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mountplan.changes import OBJECT_GONE, OBJECT_REPLACED, Action, Change, FieldChange
from mountplan.model import ObjectKind, ObjectSpec, Plan
from mountplan.object_identity import (
    Found,
    ObjectProof,
    ObservedObject,
    RecordedObject,
    is_same_inode,
    is_same_object,
)

__all__ = ["Found", "ObjectProof", "ObservedObject", "RecordedObject", "diff_objects", "is_same_inode", "is_same_object"]


def _drift(spec: ObjectSpec, seen: ObservedObject) -> tuple[FieldChange, ...]:
    fields = []
    if spec.mode is not None and seen.mode != spec.mode:
        fields.append(FieldChange("mode", f"{spec.mode:04o}", f"{seen.mode:04o}"))
    if spec.uid is not None and seen.uid != spec.uid:
        fields.append(FieldChange("uid", str(spec.uid), str(seen.uid)))
    if spec.gid is not None and seen.gid != spec.gid:
        fields.append(FieldChange("gid", str(spec.gid), str(seen.gid)))
    return tuple(fields)


def diff_objects(
    plan: Plan,
    recorded: Sequence[RecordedObject],
    observed: Mapping[str, ObservedObject],
    fresh_mounts: Mapping[tuple[str, str], str],
    *,
    prune: bool,
) -> tuple[list[Change], list[Change], list[str]]:
    """(changes, kept, problems) for the plan's objects.

    ``observed`` has an entry per planned object that was looked at;
    ``fresh_mounts`` maps (root, target) of every mount apply (re)creates to its
    name: an object beneath one lies in a new, empty filesystem, so it is simply
    created there (what was under the old mount went with it).
    """
    by_name = {r.name: r for r in recorded}
    changes: list[Change] = []
    problems: list[str] = []
    for spec in plan.objects:
        rec = by_name.get(spec.name)
        where = f"{spec.root}:{spec.path}"
        fresh = _fresh_holder(spec, fresh_mounts)
        seen = observed.get(spec.name, ObservedObject(Found.ABSENT))
        if rec is not None and (rec.root, rec.path) != (spec.root, spec.path):
            # Moved in the plan: ours at the old path goes, a new one is made at
            # the new path (forgetting the old one would leak it past destroy).
            changes.append(Change(spec.name, spec.root, spec.path, Action.REPLACE,
                                  (FieldChange("path", where, f"{rec.root}:{rec.path}"),), "path forces replacement"))
            if fresh is None:
                problems += _occupied(spec, seen, where)
            continue
        if fresh is not None:
            changes.append(Change(spec.name, spec.root, spec.path, Action.CREATE,
                                  reason=f"{spec.describe()}; in {fresh!r}, which apply (re)creates"))
            continue
        if seen.found is Found.BLOCKED:
            changes.append(Change(spec.name, spec.root, spec.path, Action.CREATE, reason=spec.describe()))
            problems.append(f"{spec.name} ({where}): {seen.detail}")
            continue
        if seen.found is Found.COVERED:
            # A mount sits on it (a planned directory a mount targets): ours if recorded.
            if rec is None:
                changes.append(Change(spec.name, spec.root, spec.path, Action.CREATE, reason=spec.describe()))
                problems.append(f"{spec.name} ({where}): EEXIST: a mount is on this path already")
            else:
                changes.append(Change(spec.name, spec.root, spec.path, Action.NOOP))
            continue
        if seen.found is Found.ABSENT:
            reason = spec.describe() if rec is None else OBJECT_GONE
            changes.append(Change(spec.name, spec.root, spec.path, Action.CREATE, reason=reason))
            continue
        if rec is None or not is_same_object(rec, seen):
            # Never ours, or replaced since: someone else's; never removed or replaced.
            reason = spec.describe() if rec is None else OBJECT_REPLACED
            changes.append(Change(spec.name, spec.root, spec.path, Action.CREATE, reason=reason))
            whose = "mountplan did not make" if rec is None else f"that replaced the {rec.kind} mountplan made"
            problems.append(f"{spec.name} ({where}): EEXIST: a {seen.kind} {whose} is there; it is left alone")
            continue
        if seen.kind != spec.kind.value:
            changes.append(Change(spec.name, spec.root, spec.path, Action.REPLACE,
                                  (FieldChange("kind", spec.kind.value, seen.kind),), "kind forces replacement"))
        elif spec.kind is ObjectKind.SYMLINK and seen.link != spec.link:
            changes.append(Change(spec.name, spec.root, spec.path, Action.REPLACE,
                                  (FieldChange("link", str(spec.link), seen.link),), "link forces replacement"))
        else:
            fields = _drift(spec, seen)
            action = Action.UPDATE if fields else Action.NOOP
            changes.append(Change(spec.name, spec.root, spec.path, action, fields, "drifted" if fields else ""))
    planned = {o.name for o in plan.objects}
    kept: list[Change] = []
    for rec in recorded:
        if rec.name not in planned:
            orphan = Change(rec.name, rec.root, rec.path, Action.DELETE, reason="no longer in the plan")
            (changes if prune else kept).append(orphan)
    return changes, kept, problems


def _occupied(spec: ObjectSpec, seen: ObservedObject, where: str) -> list[str]:
    """Why a new object cannot be made at ``where`` (it is not ours to replace), if it cannot."""
    if seen.found is Found.BLOCKED:
        return [f"{spec.name} ({where}): {seen.detail}"]
    if seen.found is Found.COVERED:
        return [f"{spec.name} ({where}): EEXIST: a mount is on this path already"]
    if seen.found is Found.PRESENT:
        return [f"{spec.name} ({where}): EEXIST: a {seen.kind} mountplan did not make is there; it is left alone"]
    return []


def _fresh_holder(spec: ObjectSpec, fresh_mounts: Mapping[tuple[str, str], str]) -> str | None:
    path = spec.path
    while "/" in path:
        path = path.rpartition("/")[0]
        name = fresh_mounts.get((spec.root, path))
        if name is not None:
            return name
    return None
