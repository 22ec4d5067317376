"""How a managed mount's idmapping differs from the plan's: pure data in, field differences out.

A mapping cannot change on a live mount (the kernel sets it only on a detached
one), so every difference found here forces replacement. What is compared, best
first: the live maps (statmount ``STATMOUNT_MNT_UIDMAP``/``GIDMAP``, Linux 6.15),
else the maps apply recorded in the state; for a plan that names an existing
user namespace, its identity (device, inode) now against the one recorded. The
``MOUNT_ATTR_IDMAP`` bit itself comes from the live table (statmount's
``mnt_attr``, or ``idmapped`` among mountinfo's mount options) on every kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mountplan._kernel.constants import MountAttr
from mountplan.livetable import LiveMount
from mountplan.model import IdMapping, IdRange, MountSpec, render_ranges

__all__ = ["IdmapEvidence", "idmap_differences", "parse_map_lines"]

_NONE = "(not idmapped)"


@dataclass(frozen=True, slots=True)
class IdmapEvidence:
    """What the engine learned of one managed mount's idmapping (the diff never asks the kernel)."""

    #: (uid lines, gid lines) from statmount, ``((), ())`` when not idmapped, None when unknown
    live: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    #: the state's record (ManagedMount.idmap)
    recorded: dict[str, Any] | None = None
    #: (device, inode) of the user namespace the plan names, now (None: cannot be opened)
    userns_now: tuple[int, int] | None = None


def parse_map_lines(lines: Sequence[str]) -> tuple[IdRange, ...] | None:
    """``"0 100000 65536"`` lines as ranges, sorted by inside id (None when one does not parse)."""
    out: list[IdRange] = []
    for line in lines:
        parts = line.split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return None
        out.append(IdRange(int(parts[0]), int(parts[1]), int(parts[2])))
    return tuple(sorted(out, key=lambda r: r.inside))


def _recorded_ranges(recorded: dict[str, Any], key: str) -> tuple[IdRange, ...]:
    return tuple(sorted((IdRange(*line) for line in recorded.get(key, [])), key=lambda r: r.inside))


def _sorted(ranges: tuple[IdRange, ...]) -> tuple[IdRange, ...]:
    return tuple(sorted(ranges, key=lambda r: r.inside))


def idmap_differences(spec: MountSpec, live: LiveMount, evidence: IdmapEvidence) -> list[tuple[str, str, str]]:
    """(field, planned, live) for each way the live idmapping differs from ``spec``'s."""
    planned: IdMapping | None = spec.bind.idmap if spec.bind is not None else None
    idmapped = bool(live.attrs & MountAttr.IDMAP)
    if planned is None:
        return [("idmap", _NONE, _describe_live(evidence))] if idmapped else []
    if not idmapped:
        return [("idmap", planned.render(), _NONE)]
    if planned.userns is not None:
        return _userns_differences(planned.userns, evidence)
    have_uids: tuple[IdRange, ...] | None = None
    have_gids: tuple[IdRange, ...] | None = None
    if evidence.live is not None and evidence.live[0]:
        have_uids, have_gids = parse_map_lines(evidence.live[0]), parse_map_lines(evidence.live[1])
    elif evidence.recorded is not None and "userns" not in evidence.recorded:
        have_uids = _recorded_ranges(evidence.recorded, "uids")
        have_gids = _recorded_ranges(evidence.recorded, "gids")
    elif evidence.recorded is not None:
        return [("idmap", planned.render(), f"userns {evidence.recorded['userns']}")]
    out: list[tuple[str, str, str]] = []
    for name, want, have in (("idmap.uids", planned.uids, have_uids), ("idmap.gids", planned.gids, have_gids)):
        if have is not None and _sorted(want) != have:
            out.append((name, render_ranges(_sorted(want)), render_ranges(have)))
    return out


def _userns_differences(ref: str, evidence: IdmapEvidence) -> list[tuple[str, str, str]]:
    recorded = evidence.recorded
    if recorded is None:
        return []  # made before the state recorded idmaps: nothing to compare with
    if recorded.get("userns") != ref:
        was = f"userns {recorded['userns']}" if "userns" in recorded else "uids " + render_ranges(
            _recorded_ranges(recorded, "uids"))
        return [("idmap", f"userns {ref}", was)]
    then = recorded.get("ns")
    now = evidence.userns_now
    if isinstance(then, list) and now is not None and tuple(then) != now:
        return [("idmap.userns", f"{ref} (now namespace inode {now[1]})", f"{ref} (namespace inode {then[1]} when applied)")]
    return []


def _describe_live(evidence: IdmapEvidence) -> str:
    if evidence.live is not None and evidence.live[0]:
        uids, gids = parse_map_lines(evidence.live[0]), parse_map_lines(evidence.live[1])
        if uids is not None and gids is not None:
            return f"uids {render_ranges(uids)} gids {render_ranges(gids)}"
    if evidence.recorded is not None:
        if "userns" in evidence.recorded:
            return f"userns {evidence.recorded['userns']}"
        return (f"uids {render_ranges(_recorded_ranges(evidence.recorded, 'uids'))} "
                f"gids {render_ranges(_recorded_ranges(evidence.recorded, 'gids'))}")
    return "idmapped"
