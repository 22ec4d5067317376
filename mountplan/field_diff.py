"""The per-field diff of one planned mount against its live mount: in place (``~``) or forces replacement (``-/+``)."""

from __future__ import annotations

from mountplan._fsopts import options_differ
from mountplan._kernel.constants import MOUNT_ATTR_ATIME_MASK, MountAttr
from mountplan._kernel.constants import Propagation as KernelPropagation
from mountplan.change_records import Action, FieldChange
from mountplan.livetable import LiveMount, LiveTable, descendants
from mountplan.model import ATIME_ATTRS, MountKind, MountSpec, Propagation

__all__ = [
    "PLANNED_BITS",
    "RECONFIGURABLE",
    "REPLACE_ON_CHANGE",
    "SUPERBLOCK_RW",
    "attr_text",
    "compare",
    "forces_replacement",
    "subtree_fields",
]

#: The attribute bits a plan controls (IDMAP is not plan-controlled).
PLANNED_BITS = (
    MountAttr.RDONLY
    | MountAttr.NOSUID
    | MountAttr.NODEV
    | MountAttr.NOEXEC
    | MountAttr.NODIRATIME
    | MountAttr.NOSYMFOLLOW
    | MountAttr(MOUNT_ATTR_ATIME_MASK)
)


def attr_text(flags: MountAttr) -> str:
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
        have_attrs = MountAttr(int(live.attrs) & int(PLANNED_BITS))
        if want_attrs != have_attrs:
            fields.append(FieldChange("attrs", attr_text(want_attrs), attr_text(have_attrs)))
    else:
        # A bind inherits whatever the source had; the plan only adds flags.
        want_attrs = spec.kernel_attrs
        missing = MountAttr(int(want_attrs) & ~int(live.attrs) & ~MOUNT_ATTR_ATIME_MASK)
        atime_ok = not (spec.attrs & ATIME_ATTRS) or (
            int(live.attrs) & MOUNT_ATTR_ATIME_MASK == int(want_attrs) & MOUNT_ATTR_ATIME_MASK
        )
        if missing or not atime_ok:
            have_attrs = MountAttr(int(live.attrs) & int(PLANNED_BITS))
            # What the bind will have: its flags plus the planned ones (its atime
            # mode unless the plan names one), not the planned flags alone.
            keep = int(have_attrs) & ~MOUNT_ATTR_ATIME_MASK if spec.attrs & ATIME_ATTRS else int(have_attrs)
            will_have = MountAttr(keep | int(want_attrs))
            fields.append(FieldChange("attrs", attr_text(will_have), attr_text(have_attrs)))
    if not _expected_propagation(spec.propagation, live):
        fields.append(FieldChange("propagation", spec.propagation.value, live.propagation.name.lower()))
    return (Action.UPDATE if fields else Action.NOOP), tuple(fields)


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
            have = MountAttr(int(m.attrs) & int(PLANNED_BITS))
            out.append(FieldChange(f"attrs.beneath:{m.mount_point}", attr_text(want), attr_text(have)))
    return tuple(out)
