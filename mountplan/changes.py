"""Change sets: classify every planned mount against the state file and the live mount table.

Pure data in, data out: the diff never calls the kernel. Actions are the glyphs
``mountplan plan`` prints, Terraform style:

``+`` create, ``~`` update in place (mount_setattr for attributes and
propagation, fspick + reconfigure for superblock options), ``-/+`` replace,
``-`` destroy (made by mountplan, no longer planned), and no-op.
A mount mountplan did not make is never an action: it is reported as foreign.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mountplan._fsopts import options_differ
from mountplan._idmap_drift import IdmapEvidence, idmap_differences
from mountplan._kernel.constants import MOUNT_ATTR_ATIME_MASK, MountAttr
from mountplan._kernel.constants import Propagation as KernelPropagation
from mountplan.livetable import LiveMount, LiveTable
from mountplan.model import ATIME_ATTRS, MountKind, MountSpec, Plan, Propagation

__all__ = ["Action", "Change", "ChangeSet", "FieldChange", "ForeignMount", "descendants", "diff", "mount_key", "subtree_fields"]

FORMAT_VERSION = 1

#: Reason of a CREATE whose earlier mount vanished (drift), unlike a never-applied one.
GONE = "the mount mountplan made is gone"
#: Reasons of a CREATE of a planned object that is drift: it vanished, or something else took its path.
OBJECT_GONE = "the object mountplan made is gone"
OBJECT_REPLACED = "the object mountplan made was replaced by something it did not make"

#: The attribute bits a plan controls (IDMAP is not plan-controlled).
_PLANNED_BITS = (
    MountAttr.RDONLY
    | MountAttr.NOSUID
    | MountAttr.NODEV
    | MountAttr.NOEXEC
    | MountAttr.NODIRATIME
    | MountAttr.NOSYMFOLLOW
    | MountAttr(MOUNT_ATTR_ATIME_MASK)
)


class Action(enum.Enum):
    NOOP = " "
    CREATE = "+"
    UPDATE = "~"
    REPLACE = "-/+"
    DELETE = "-"


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One differing field: ``attrs``, ``propagation``, ``options``, ``fs_type``, ``source``."""

    field: str
    planned: str
    live: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "planned": self.planned, "live": self.live}


@dataclass(frozen=True, slots=True)
class ForeignMount:
    """A mount mountplan did not make, on or beneath a planned target."""

    mount_point: str
    fs_type: str
    source: str
    near: str  # the planned mount it sits on/under

    def to_json(self) -> dict[str, str]:
        return {"mount_point": self.mount_point, "fs_type": self.fs_type, "source": self.source, "near": self.near}


@dataclass(frozen=True, slots=True)
class Change:
    """What apply will do for one mount, and why."""

    mount: str
    root: str
    target: str
    action: Action
    fields: tuple[FieldChange, ...] = ()
    reason: str = ""
    mnt_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mount": self.mount,
            "root": self.root,
            "target": self.target,
            "action": self.action.name.lower(),
            "symbol": self.action.value,
            "fields": [f.to_json() for f in self.fields],
            "reason": self.reason,
            "mnt_id": self.mnt_id,
        }


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


def _attr_text(flags: MountAttr) -> str:
    names = []
    if flags & MountAttr.RDONLY:
        names.append("ro")
    for flag, name in (
        (MountAttr.NOSUID, "nosuid"),
        (MountAttr.NODEV, "nodev"),
        (MountAttr.NOEXEC, "noexec"),
        (MountAttr.NODIRATIME, "nodiratime"),
        (MountAttr.NOSYMFOLLOW, "nosymfollow"),
    ):
        if flags & flag:
            names.append(name)
    atime = int(flags) & MOUNT_ATTR_ATIME_MASK
    names.append({0: "relatime", int(MountAttr.NOATIME): "noatime", int(MountAttr.STRICTATIME): "strictatime"}.get(atime, hex(atime)))
    return ",".join(names)


#: Options a filesystem changes on reconfigure (fspick + FSCONFIG_CMD_RECONFIGURE)
#: and shows back; any other option change needs a new mount ("forces replacement").
#: tmpfs ignores mode/uid/gid on reconfigure (kernel.md); overlayfs refuses it.
RECONFIGURABLE: dict[str, frozenset[str]] = {
    "tmpfs": frozenset({"size", "nr_blocks", "nr_inodes", "huge", "mpol", "noswap"}),
    "proc": frozenset({"hidepid", "gid", "subset"}),
    "devpts": frozenset({"mode", "ptmxmode", "gid", "uid", "max"}),
}
#: Filesystems whose superblock mountplan creates writable (an overlay without an
#: upper layer, for one, is read-only by nature): a read-only one is drift.
SUPERBLOCK_RW = frozenset({"tmpfs", "ramfs", "devpts", "mqueue"})
#: Replaced, never updated in place, whatever changed in their definition.
REPLACE_ON_CHANGE = frozenset({"overlay"})


def forces_replacement(fs_type: str | None, option_key: str, planned: str | None) -> bool:
    """An option difference that reconfigure cannot fix: not reconfigurable, or dropped from the plan."""
    return planned is None or option_key not in RECONFIGURABLE.get(fs_type or "", frozenset())


def _planned_options(spec: MountSpec) -> dict[str, str | None]:
    return {opt.key: opt.value for opt in spec.options}


def _expected_propagation(mode: Propagation, live: LiveMount) -> bool:
    want = mode.kernel_value
    if want is KernelPropagation.SLAVE:
        # Without a master the kernel makes a "slave" private (kernel.md).
        return live.propagation in {KernelPropagation.SLAVE, KernelPropagation.PRIVATE}
    return bool(live.propagation == want)


def compare(spec: MountSpec, live: LiveMount) -> tuple[Action, tuple[FieldChange, ...]]:
    """How a live mount made for ``spec`` differs from it."""
    fields: list[FieldChange] = []
    if spec.kind is MountKind.FILESYSTEM:
        if live.fs_type != spec.fs_type:
            fields.append(FieldChange("fs_type", str(spec.fs_type), live.fs_type))
        want_source = spec.source or spec.fs_type or ""
        if live.source != want_source:
            fields.append(FieldChange("source", want_source, live.source))
        if fields:
            return Action.REPLACE, tuple(fields)
        replace: list[FieldChange] = []
        if spec.fs_type not in REPLACE_ON_CHANGE:
            for key, planned, have in options_differ(spec.fs_type or "", _planned_options(spec), live.super_options):
                change = FieldChange(f"options.{key}", planned or "(absent)", have or "(absent)")
                (replace if forces_replacement(spec.fs_type, key, planned) else fields).append(change)
        if replace:
            return Action.REPLACE, tuple(replace)
        if live.super_readonly and spec.fs_type in SUPERBLOCK_RW:
            # `mount -o remount,ro` makes the *superblock* read-only: clearing the
            # mount's ro attribute leaves writes failing with EROFS (kernel.md).
            fields.append(FieldChange("superblock", "rw", "ro"))
        want_attrs = spec.kernel_attrs
        have_attrs = MountAttr(int(live.attrs) & int(_PLANNED_BITS))
        if want_attrs != have_attrs:
            fields.append(FieldChange("attrs", _attr_text(want_attrs), _attr_text(have_attrs)))
    else:
        # A bind inherits whatever the source had; the plan only adds flags.
        want_attrs = spec.kernel_attrs
        missing = MountAttr(int(want_attrs) & ~int(live.attrs) & ~MOUNT_ATTR_ATIME_MASK)
        atime_ok = not (spec.attrs & ATIME_ATTRS) or (
            int(live.attrs) & MOUNT_ATTR_ATIME_MASK == int(want_attrs) & MOUNT_ATTR_ATIME_MASK
        )
        if missing or not atime_ok:
            have_attrs = MountAttr(int(live.attrs) & int(_PLANNED_BITS))
            # What the bind will have: its flags plus the planned ones (its atime
            # mode unless the plan names one), not the planned flags alone.
            keep = int(have_attrs) & ~MOUNT_ATTR_ATIME_MASK if spec.attrs & ATIME_ATTRS else int(have_attrs)
            will_have = MountAttr(keep | int(want_attrs))
            fields.append(FieldChange("attrs", _attr_text(will_have), _attr_text(have_attrs)))
    if not _expected_propagation(spec.propagation, live):
        fields.append(FieldChange("propagation", spec.propagation.value, live.propagation.name.lower()))
    return (Action.UPDATE if fields else Action.NOOP), tuple(fields)


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


def subtree_fields(spec: MountSpec, live: LiveTable, ours: LiveMount) -> tuple[FieldChange, ...]:
    """A recursive bind's attributes hold for every submount (documented): each one lacking them is drift.

    Shown as ``attrs.beneath:<mount point>``; apply fixes the tree with AT_RECURSIVE.
    """
    if spec.bind is None or not spec.bind.recursive:
        return ()
    want = MountAttr(int(spec.kernel_attrs) & ~MOUNT_ATTR_ATIME_MASK)
    if not want:
        return ()
    out = []
    for m in sorted(descendants(live, ours), key=lambda m: m.mount_point):
        if int(want) & ~int(m.attrs):
            have = MountAttr(int(m.attrs) & int(_PLANNED_BITS))
            out.append(FieldChange(f"attrs.beneath:{m.mount_point}", _attr_text(want), _attr_text(have)))
    return tuple(out)


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


def descendants(table: LiveTable, mount: LiveMount) -> list[LiveMount]:
    """Every mount attached (directly or not) beneath ``mount``, from the real parent links."""
    key = mount_key(mount)
    children: dict[int, list[LiveMount]] = {}
    for m in table:
        parent = table.parent(m)
        if parent is not None and parent is not m:
            children.setdefault(mount_key(parent), []).append(m)
    out: list[LiveMount] = []
    todo = list(children.get(key, ()))
    while todo:
        m = todo.pop()
        out.append(m)
        todo.extend(children.get(mount_key(m), ()))
    return out


def mount_key(m: LiveMount) -> int:
    """A mount's id in the table's own id space (unique where the table has them)."""
    return m.mnt_id if m.mnt_id is not None else m.mnt_id_old




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
