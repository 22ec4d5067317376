"""What is at a path and whether it is the object mountplan made: the one ownership proof.

Shared by the diff (:mod:`mountplan.object_changes`) and the engine's destroy,
rollback and recovery of mountpoints and planned objects, so the proof is
written once and a run of a plan without planned objects loads only this.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Found", "ObjectProof", "ObservedObject", "RecordedObject", "is_same_inode", "is_same_object"]


class Found(enum.Enum):
    """What is at an object's path now."""

    ABSENT = "absent"
    PRESENT = "present"
    #: a mount is on top of the path: what lies under it cannot be seen from here
    COVERED = "covered"
    #: the path cannot be reached beneath the root (a symlink or a non-directory on the way)
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class ObservedObject:
    """What the engine saw at an object's path (lstat: a final symlink is not followed)."""

    found: Found
    kind: str = ""  # "directory" | "file" | "symlink" | "other"
    dev: int = 0
    ino: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    link: str = ""
    detail: str = ""
    btime: int | None = None
    size: int = 0


class ObjectProof(Protocol):
    """What proves an object is the one mountplan made (a state record, a journal line)."""

    @property
    def kind(self) -> str: ...
    @property
    def dev(self) -> int: ...
    @property
    def ino(self) -> int: ...
    @property
    def link(self) -> str: ...
    @property
    def btime(self) -> int | None: ...


class RecordedObject(ObjectProof, Protocol):
    """What the state file says apply made (engine.state.ManagedObject)."""

    name: str
    root: str
    path: str


def is_same_object(proof: ObjectProof, seen: ObservedObject) -> bool:
    """The object at the path is the one proven: device, inode, kind, a symlink's text and (where both have one) birth time.

    The one ownership predicate of diff, destroy, rollback and recovery.
    """
    same_link = proof.kind != "symlink" or proof.link == seen.link
    return seen.kind == proof.kind and same_link and is_same_inode(seen, proof.dev, proof.ino, proof.btime)


def is_same_inode(seen: ObservedObject, dev: int, ino: int, btime: int | None) -> bool:
    """``seen`` is inode (dev, ino) born at ``btime`` (where both have one): a reused inode number is not."""
    same_birth = btime is None or seen.btime is None or btime == seen.btime
    return seen.found is Found.PRESENT and (seen.dev, seen.ino) == (dev, ino) and same_birth
