"""What a state file holds: the mounts and objects mountplan made for one plan instance, and the key naming it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .journal import all_uints, parse_proof, valid_submounts
from .managed_object import ManagedObject
from .scope import current_scope

__all__ = ["FORMAT", "InstanceInfo", "ManagedMount", "State", "instance_key"]

#: 2: the file carries the boot and mount namespace it was written in.
FORMAT = 2


def instance_key(plan_name: str, roots: dict[str, dict[str, Any]], mntns: int | None = None) -> str:
    """A file-name-safe key for one plan applied to one set of root inodes in one mount namespace.

    The namespace is part of the key so ``run --unshare`` keeps its own state.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", plan_name)[:64] or "plan"
    ns = current_scope().mntns if mntns is None else mntns
    ident = json.dumps({"mntns": ns, "roots": {k: [v["dev"], v["ino"]] for k, v in sorted(roots.items())}},
                       sort_keys=True)
    return f"{safe}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


@dataclass(slots=True)
class ManagedMount:
    """A mount mountplan made, proven by its mount id, plus what it created for it."""

    name: str
    root: str
    target: str
    mnt_id: int
    unique: bool
    fingerprint: str
    created: list[dict[str, Any]] = field(default_factory=list)
    recursive: bool = False  # a recursive bind (detaching takes its cloned submounts)
    submounts: tuple[int, ...] = ()  # ids of the submounts a recursive bind cloned (proven ours)
    #: without unique ids: [dev major, dev minor, root ino, root btime ns | None] of the mount's root
    proof: list[int | None] | None = None
    #: an idmapped bind's mapping as applied: {"uids": [[i, o, c]...], "gids": [...]}, or
    #: {"userns": ref, "ns": [dev, ino]} (the namespace's identity when applied)
    idmap: dict[str, Any] | None = None
    #: a tmpfs or ramfs this mount's own fsopen made: what lies in it goes with its last mount
    volatile: bool = False

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.name, "root": self.root, "target": self.target, "mnt_id": self.mnt_id,
            "unique": self.unique, "fingerprint": self.fingerprint, "created": self.created,
            "recursive": self.recursive, "submounts": list(self.submounts),
        }
        if self.proof is not None:
            data["proof"] = self.proof
        if self.idmap is not None:
            data["idmap"] = self.idmap
        if self.volatile:
            data["volatile"] = True
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManagedMount:
        created = data.get("created", [])
        if not isinstance(created, list) or not all(isinstance(c, dict) for c in created):
            raise TypeError(f"'created' of {data.get('name')!r} is not a list of objects")
        for key in ("name", "root", "target"):
            if type(data[key]) is not str:
                raise TypeError(f"{key!r} is not a string")
        if not all_uints(data["mnt_id"]) or not valid_submounts(data):
            raise TypeError(f"'mnt_id' or 'submounts' of {data['name']!r} is not a (list of) integer(s)")
        return cls(
            name=data["name"], root=data["root"], target=data["target"], mnt_id=data["mnt_id"],
            unique=bool(data.get("unique", True)), fingerprint=str(data.get("fingerprint", "")),
            created=list(created), recursive=bool(data.get("recursive", False)),
            submounts=tuple(data.get("submounts", ())), proof=parse_proof(data.get("proof")),
            idmap=_parse_idmap(data.get("idmap")), volatile=data.get("volatile") is True,
        )


def _parse_idmap(value: object) -> dict[str, Any] | None:
    """A recorded idmap, checked for shape (the diff compares it; it never reaches the kernel)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError("'idmap' is not an object")
    for key in ("uids", "gids"):
        lines = value.get(key, [])
        if not isinstance(lines, list) or not all(isinstance(line, list) and all_uints(*line) for line in lines):
            raise TypeError(f"'idmap.{key}' is not a list of integer lists")
    if "userns" in value and not isinstance(value["userns"], str):
        raise TypeError("'idmap.userns' is not a string")
    return dict(value)


@dataclass(slots=True)
class State:
    """The committed state of one plan instance: its mounts and (in creation order) its objects."""

    plan: str
    roots: dict[str, dict[str, Any]]
    mounts: list[ManagedMount] = field(default_factory=list)
    objects: list[ManagedObject] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = {"format": FORMAT, "plan": self.plan, "roots": self.roots, "mounts": [m.to_json() for m in self.mounts]}
        if self.objects:  # absent, not [], so a state without objects reads as before
            data["objects"] = [o.to_json() for o in self.objects]
        return data

    @property
    def is_empty(self) -> bool:
        return not self.mounts and not self.objects

    def has_object(self, name: str) -> bool:
        return any(o.name == name for o in self.objects)

    def object(self, name: str) -> ManagedObject:
        """The recorded object ``name`` (KeyError if none)."""
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A plan instance found in a state directory; ``foreign`` says why it is not ours to act on."""

    key: str
    foreign: str | None = None
