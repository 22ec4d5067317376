"""Change sets: classify every planned mount against the state file and the live mount table.

Pure data in, data out: the diff never calls the kernel. Actions are the glyphs
``mountplan plan`` prints, Terraform style:

``+`` create, ``~`` update in place (mount_setattr for attributes and
propagation, fspick + reconfigure for superblock options), ``-/+`` replace,
``-`` destroy (made by mountplan, no longer planned), and no-op.
A mount mountplan did not make is never an action: it is reported as foreign.

This module classifies (:func:`diff`) and holds the result (:class:`ChangeSet`,
:func:`render`); the per-field comparison is :mod:`mountplan.field_diff` and
the records are :mod:`mountplan.change_records`, both importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mountplan._idmap_drift import IdmapEvidence, idmap_differences
from mountplan._kernel.constants import MountAttr
from mountplan.change_records import (
    GONE,
    OBJECT_GONE,
    OBJECT_REPLACED,
    Action,
    Change,
    FieldChange,
    ForeignMount,
)
from mountplan.field_diff import (
    RECONFIGURABLE,
    REPLACE_ON_CHANGE,
    SUPERBLOCK_RW,
    compare,
    forces_replacement,
    subtree_fields,
)
from mountplan.livetable import LiveMount, LiveTable, descendants, mount_key
from mountplan.model import MountKind, Plan

__all__ = [
    "GONE",
    "OBJECT_GONE",
    "OBJECT_REPLACED",
    "RECONFIGURABLE",
    "REPLACE_ON_CHANGE",
    "SUPERBLOCK_RW",
    "Action",
    "Change",
    "ChangeSet",
    "FieldChange",
    "ForeignMount",
    "compare",
    "descendants",
    "diff",
    "forces_replacement",
    "mount_key",
    "render",
    "subtree_fields",
]

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """Every change for one plan instance, in plan order, plus foreign mounts seen."""

    plan: str
    changes: tuple[Change, ...]
    foreign: tuple[ForeignMount, ...] = ()
    #: Mounts mountplan made that the plan no longer lists, when not pruning:
    #: apply leaves them alone (``apply --prune`` makes them DELETE changes).
    kept: tuple[Change, ...] = ()
    #: What the kernel refuses among the mounts apply would make (asked by ``plan``, changing nothing).
    problems: tuple[str, ...] = ()
    #: What an interrupted run left in the journal: recover (or the next apply) does this first.
    pending: tuple[str, ...] = ()

    def counts(self) -> tuple[int, int, int]:
        add = sum(c.action in {Action.CREATE, Action.REPLACE} for c in self.changes)
        change = sum(c.action is Action.UPDATE for c in self.changes)
        destroy = sum(c.action in {Action.DELETE, Action.REPLACE} for c in self.changes)
        return add, change, destroy

    @property
    def has_changes(self) -> bool:
        return any(c.action is not Action.NOOP for c in self.changes)

    @property
    def has_drift(self) -> bool:
        """Something mountplan made no longer matches the plan, or a foreign mount is in the way.

        Unlike :attr:`has_changes`, a mount that was simply never applied is not drift.
        """
        drifted = {Action.UPDATE, Action.REPLACE}
        return bool(self.foreign) or any(
            c.action in drifted or (c.action is Action.CREATE and c.reason in (GONE, OBJECT_GONE, OBJECT_REPLACED))
            for c in self.changes
        )

    def summary(self) -> str:
        if not self.has_changes:
            return "No changes. The live mount table matches the plan."
        add, change, destroy = self.counts()
        text = f"Plan: {add} to add, {change} to change, {destroy} to destroy."
        if self.problems:
            text += f" Apply would fail: the kernel refuses {len(self.problems)} of these mounts."
        return text

    def to_json(self) -> dict[str, Any]:
        add, change, destroy = self.counts()
        return {
            "format_version": FORMAT_VERSION,
            "plan": self.plan,
            "changes": [c.to_json() for c in self.changes],
            "foreign": [f.to_json() for f in self.foreign],
            "kept": [c.to_json() for c in self.kept],
            "problems": list(self.problems),
            "pending": list(self.pending),
            "summary": {"add": add, "change": change, "destroy": destroy},
        }


def _find(live: LiveTable, entry: tuple[Any, ...]) -> LiveMount | None:
    """A managed mount in the live table: by unique id, or by the 32-bit id it was recorded with.

    ``entry[4]`` False means the id is a reusable 32-bit one (a kernel without
    unique ids); the caller still checks the mount point.
    """
    unique = entry[4] if len(entry) > 4 else True
    return live.by_id(entry[0]) if unique else live.by_old_id(entry[0])


def diff(
    plan: Plan,
    managed: Mapping[str, tuple[Any, ...]],
    live: LiveTable,
    root_paths: Mapping[str, str],
    fingerprints: Mapping[str, str],
    *,
    prune: bool,
    owned: frozenset[int] = frozenset(),
    idmaps: Mapping[str, IdmapEvidence] | None = None,
) -> ChangeSet:
    """Classify each planned mount.

    ``managed`` maps a mount name to (mnt_id, root, target, fingerprint[, unique])
    from the state file; ``fingerprints`` gives the plan's current fingerprint
    (needed for managed mounts only); ``root_paths`` the absolute directory of each
    root (for mount points); ``owned`` the ids of other mounts that are ours (the
    submounts recursive binds cloned, a private root's bind). A managed mount the
    plan no longer lists is a DELETE change with ``prune``, else it goes to
    :attr:`ChangeSet.kept`. A (re)created mount takes the planned mounts beneath
    it along (a cascade: they would be shadowed). Every mount beneath a root that
    is not ours is reported as foreign. ``idmaps`` holds what the engine learned
    of managed binds' idmappings; a difference forces replacement.
    """
    changes: list[Change] = []
    foreign: list[ForeignMount] = []
    planned_names = {m.name for m in plan.mounts}
    for spec in plan.mounts:
        point = f"{root_paths[spec.root].rstrip('/')}/{spec.target}"
        entry = managed.get(spec.name)
        ours = _find(live, entry) if entry is not None else None
        if ours is not None and ours.mount_point != point:
            ours = None  # ours, but moved elsewhere: treat as gone and recreate here
        for other in live.at(point):
            if other is not ours and mount_key(other) not in owned:
                foreign.append(ForeignMount(other.mount_point, other.fs_type, other.source, spec.name))
        if ours is None:
            reason = "not mounted" if entry is None else GONE
            changes.append(Change(spec.name, spec.root, spec.target, Action.CREATE, reason=reason))
            continue
        assert entry is not None
        if spec.kind is MountKind.BIND or ours.attrs & MountAttr.IDMAP:
            evidence = (idmaps or {}).get(spec.name, IdmapEvidence())
            moved = [FieldChange(*d) for d in idmap_differences(spec, ours, evidence)]
            if moved:
                changes.append(Change(
                    spec.name, spec.root, spec.target, Action.REPLACE, tuple(moved),
                    "idmap forces replacement (a mapping cannot change on a live mount)", mnt_id=entry[0],
                ))
                continue
        if entry[3] != fingerprints[spec.name] and (spec.kind is MountKind.BIND or spec.fs_type in REPLACE_ON_CHANGE):
            what = "bind" if spec.kind is MountKind.BIND else f"{spec.fs_type}"
            changes.append(
                Change(spec.name, spec.root, spec.target, Action.REPLACE,
                       reason=f"{what} definition changed (forces replacement)", mnt_id=entry[0])
            )
            continue
        action, fields = compare(spec, ours)
        if action is not Action.REPLACE:
            below = subtree_fields(spec, live, ours)
            if below:
                action, fields = Action.UPDATE, fields + below
        if action is Action.REPLACE:
            reason = ", ".join(f.field for f in fields) + " forces replacement"
            changes.append(Change(spec.name, spec.root, spec.target, action, fields, reason, mnt_id=entry[0]))
            continue
        if action is Action.NOOP and entry[3] != fingerprints[spec.name]:
            action, reason = Action.UPDATE, "definition changed (no live difference)"
        else:
            reason = "drifted" if fields else ""
        changes.append(Change(spec.name, spec.root, spec.target, action, fields, reason, mnt_id=entry[0]))
    changes = _cascade(changes)
    foreign += _foreign_beneath(plan, managed, live, root_paths, owned, {f.mount_point for f in foreign})
    kept: list[Change] = []
    for name, entry in sorted(managed.items()):
        mnt_id, root, target = entry[0], entry[1], entry[2]
        if name not in planned_names and _find(live, entry) is not None:
            orphan = Change(name, root, target, Action.DELETE, reason="no longer in the plan", mnt_id=mnt_id)
            (changes if prune else kept).append(orphan)
    return ChangeSet(plan.name, tuple(changes), tuple(foreign), tuple(kept))


def _cascade(changes: list[Change]) -> list[Change]:
    """A mount (re)created over planned mounts that exist beneath it replaces them too, after it.

    Otherwise the new mount shadows them: still mounted, unreachable, and
    reported as unchanged (issue 12).
    """
    fresh = [c for c in changes if c.action in {Action.CREATE, Action.REPLACE}]
    out: list[Change] = []
    for c in changes:
        parent = next((p for p in fresh if p.root == c.root and c.target.startswith(p.target + "/")), None)
        if parent is not None and c.action in {Action.NOOP, Action.UPDATE}:
            c = Change(c.mount, c.root, c.target, Action.REPLACE, (),
                       f"cascade: {parent.mount!r} beneath which it lies is {parent.action.name.lower()}d", c.mnt_id)
        out.append(c)
    return out


def _foreign_beneath(
    plan: Plan,
    managed: Mapping[str, tuple[Any, ...]],
    live: LiveTable,
    root_paths: Mapping[str, str],
    owned: frozenset[int],
    seen: set[str],
) -> list[ForeignMount]:
    """Mounts beneath a root (not on a planned target, those are reported already) that are not ours."""
    ours = set(owned) | {entry[0] for entry in managed.values()}
    out: list[ForeignMount] = []
    reported: set[int] = set()
    for name in sorted({m.root for m in plan.mounts}):
        path = root_paths[name].rstrip("/") or "/"
        for m in live.beneath(path):
            if m.mount_point == path or mount_key(m) in ours or m.mount_point in seen or mount_key(m) in reported:
                continue
            reported.add(mount_key(m))
            out.append(ForeignMount(m.mount_point, m.fs_type, m.source, f"root {name}"))
    return out


def render(changes: ChangeSet) -> str:
    """Terraform-style text for ``mountplan plan`` / ``diff``."""
    lines = []
    for c in changes.changes:
        if c.action is Action.NOOP:
            continue
        head = f"{c.action.value:>3} {c.mount}  ({c.root}:{c.target})"
        if c.reason:
            head += f"  # {c.reason}"
        lines.append(head)
        for field_change in c.fields:
            lines.append(f"      {field_change.field}: {field_change.live} -> {field_change.planned}")
    for c in changes.kept:
        lines.append(f"    {c.mount}  ({c.root}:{c.target})  # no longer in the plan; kept (apply --prune removes it)")
    if changes.pending:
        lines.append("  ! an interrupted run left a journal; `mountplan recover` (or the next apply) will first:")
        lines.extend(f"      {item}" for item in changes.pending)
    for problem in changes.problems:
        lines.append(f"  ! the kernel refuses {problem}")
    for other in changes.foreign:
        lines.append(f"  ! foreign mount at {other.mount_point} ({other.fs_type} {other.source}) near {other.near!r}: left alone")
    lines.append("")
    lines.append(changes.summary())
    return "\n".join(lines) + "\n"
