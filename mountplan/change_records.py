"""The records a diff produces: the Action glyphs, one mount's Change and its FieldChanges, a ForeignMount."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["GONE", "OBJECT_GONE", "OBJECT_REPLACED", "Action", "Change", "FieldChange", "ForeignMount"]

#: Reason of a CREATE whose earlier mount vanished (drift), unlike a never-applied one.
GONE = "the mount mountplan made is gone"
#: Reasons of a CREATE of a planned object that is drift: it vanished, or something else took its path.
OBJECT_GONE = "the object mountplan made is gone"
OBJECT_REPLACED = "the object mountplan made was replaced by something it did not make"

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
