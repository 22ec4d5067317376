"""The transaction: a journal of changes with their undo, passed explicitly to every operation.

One Transaction per apply (or recover). Nothing of it lives on the Engine, so one
Engine serves concurrent applies of different plans from several threads: each
has its own store, journal fd and undo list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .journal import parse_proof
from .state import StateStore

#: Journal ops that record a change (and so have an undo).
UNDOABLE = frozenset({"mount", "mkdir", "mkfile", "update"})


@dataclass(slots=True)
class Undo:
    """One journaled change, undone in reverse order on failure."""

    seq: int
    op: str  # "mount" | "mkdir" | "mkfile" | "update"
    root: str
    path: str
    mnt_id: int = 0
    unique: bool = True  # mnt_id is a unique 64-bit id (else a reusable 32-bit one)
    dev: int = 0
    ino: int = 0
    mount: str = ""
    recursive: bool = False  # a recursive bind: its cloned submounts go with it
    #: op "mount": ids of the submounts the bind cloned (proven ours)
    submounts: tuple[int, ...] = ()
    #: op "mount" without unique ids: RootEvidence.to_json() of the mount's root
    proof: list[int | None] | None = None
    #: op "update": what the mount had before (attrs, clear, propagation, options)
    restore: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.op == "mount":
            return f"mount {self.mount!r} at {self.root}:{self.path} (mount id {self.mnt_id})"
        if self.op == "update":
            return f"in-place update of {self.mount!r} at {self.root}:{self.path} (mount id {self.mnt_id})"
        return f"{'directory' if self.op == 'mkdir' else 'file'} {self.root}:{self.path} created for {self.mount!r}"

    def to_entry(self) -> dict[str, Any]:
        """The journal line that records this change (without ``seq``)."""
        entry: dict[str, Any] = {"op": self.op, "mount": self.mount, "root": self.root, "path": self.path}
        if self.op in {"mount", "update"}:
            entry["mnt_id"] = self.mnt_id
        if self.op == "mount":
            entry["unique"] = self.unique
            entry["recursive"] = self.recursive
            if self.submounts:
                entry["submounts"] = list(self.submounts)
            if self.proof is not None:
                entry["proof"] = self.proof
        if self.restore is not None:
            entry["restore"] = self.restore
        return entry

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Undo:
        """Rebuild from a journal line; raises (KeyError, TypeError, ValueError) if malformed."""
        restore = entry.get("restore")
        if restore is not None and not isinstance(restore, dict):
            raise TypeError("restore must be an object")
        return cls(
            int(entry["seq"]), str(entry["op"]), str(entry["root"]), str(entry["path"]),
            mnt_id=int(entry.get("mnt_id", 0)), unique=bool(entry.get("unique", True)), mount=str(entry.get("mount", "")),
            recursive=bool(entry.get("recursive", False)),
            submounts=tuple(int(i) for i in entry.get("submounts", ())),
            restore=restore, proof=parse_proof(entry.get("proof")),
        )


@dataclass(slots=True)
class Transaction:
    """The journal of one apply and the undo list it builds; closed by commit or rollback."""

    store: StateStore
    undo: list[Undo] = field(default_factory=list)

    @classmethod
    def begin(cls, store: StateStore, header: dict[str, Any]) -> Transaction:
        store.journal_open(header)
        return cls(store)

    def record(self, item: Undo) -> Undo:
        """Journal ``item`` *before* the change it undoes is made, and keep it for rollback."""
        item.seq = self.store.journal_write(item.to_entry())
        self.undo.append(item)
        return item

    def created(self, item: Undo, dev: int, ino: int) -> None:
        """Record which inode a journaled mkdir/mkfile made, so undo removes only that one."""
        item.dev, item.ino = dev, ino
        self.store.journal_write({"op": "created", "ref": item.seq, "dev": dev, "ino": ino})

    def undone(self, item: Undo) -> None:
        self.store.journal_write({"op": "undone", "ref": item.seq})

    def close(self, *, remove: bool) -> None:
        self.store.journal_close(remove=remove)
