"""A planned object mountplan made, as the state file records it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .journal import all_uints


@dataclass(slots=True)
class ManagedObject:
    """A directory, file or symlink mountplan made, proven by its device and inode (and a symlink's text).

    ``mode``/``uid``/``gid`` are what apply set (-1: left as created); ``created``
    lists the parent directories made for it, like a mount's mountpoints.
    """

    name: str
    root: str
    path: str
    kind: str  # ObjectKind value
    dev: int
    ino: int
    link: str = ""
    mode: int = -1
    uid: int = -1
    gid: int = -1
    created: list[dict[str, Any]] = field(default_factory=list)
    #: birth time (ns) where the filesystem records one: an inode number freed and
    #: handed out again (ext4 does at once) is a different object
    btime: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "root": self.root, "path": self.path, "kind": self.kind, "dev": self.dev,
            "ino": self.ino, "link": self.link, "mode": self.mode, "uid": self.uid, "gid": self.gid,
            "created": self.created, "btime": self.btime,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManagedObject:
        for key in ("name", "root", "path", "kind", "link"):
            if type(data.get(key, "")) is not str:
                raise TypeError(f"object {key!r} is not a string")
        if data["kind"] not in ("directory", "file", "symlink") or not all_uints(data["dev"], data["ino"]):
            raise TypeError(f"object {data['name']!r}: bad kind or dev/ino")
        created = data.get("created", [])
        if not isinstance(created, list) or not all(isinstance(c, dict) for c in created):
            raise TypeError(f"'created' of object {data['name']!r} is not a list of objects")
        ids = [data.get(k, -1) for k in ("mode", "uid", "gid")]
        if not all(type(v) is int for v in ids):
            raise TypeError(f"object {data['name']!r}: mode/uid/gid are not integers")
        mode, uid, gid = ids
        btime = data.get("btime")
        if not (btime is None or type(btime) is int):
            raise TypeError(f"object {data['name']!r}: btime is not an integer")
        return cls(data["name"], data["root"], data["path"], data["kind"], data["dev"], data["ino"],
                   data.get("link", ""), mode, uid, gid, created=list(created), btime=btime)
