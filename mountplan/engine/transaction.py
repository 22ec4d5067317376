"""The transaction: a journal of changes with their undo, passed explicitly to every operation.

One Transaction per apply (or recover). Nothing of it lives on the Engine, so one
Engine serves concurrent applies of different plans from several threads: each
has its own store, journal fd and undo list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .journal import parse_proof
from .state import StateStore

# Linux's CLOCK_REALTIME_COARSE (time has no name for it before Python 3.13).
_CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)

#: Journal ops that record a change (and so have an undo).
UNDOABLE = frozenset({"mount", "mkdir", "mkfile", "update", "mklink", "chmod"})


@dataclass(slots=True)
class Undo:
    """One journaled change, undone in reverse order on failure."""

    seq: int
    op: str  # "mount" | "mkdir" | "mkfile" | "update" | "mklink" (a planned symlink) | "chmod" (an object's mode/owner)
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
    #: op "update": what the mount had before (attrs, clear, propagation, options);
    #: op "chmod": the object's mode, uid and gid before
    restore: dict[str, Any] | None = None
    #: op "mklink": the symlink's text (undo removes only a symlink with this text)
    link: str = ""
    #: birth time (ns) of what a create made, from its ``created`` line (None: not recorded)
    btime: int | None = None
    #: when the journal began (ns, the coarse clock inodes are stamped with), from its header:
    #: a create without a ``created`` line can only have made something born since
    since: int | None = None

    def describe(self) -> str:
        if self.op == "mount":
            return f"mount {self.mount!r} at {self.root}:{self.path} (mount id {self.mnt_id})"
        if self.op == "update":
            return f"in-place update of {self.mount!r} at {self.root}:{self.path} (mount id {self.mnt_id})"
        if self.op == "chmod":
            return f"mode/owner change of object {self.mount!r} at {self.root}:{self.path}"
        what = {"mkdir": "directory", "mkfile": "file", "mklink": "symlink"}.get(self.op, self.op)
        return f"{what} {self.root}:{self.path} created for {self.mount!r}"

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
        if self.op == "mklink":
            entry["link"] = self.link
        if self.op == "chmod":
            entry["dev"], entry["ino"] = self.dev, self.ino
            if self.btime is not None:
                entry["btime"] = self.btime
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
            restore=restore, proof=parse_proof(entry.get("proof")), link=str(entry.get("link", "")),
            dev=int(entry.get("dev", 0)), ino=int(entry.get("ino", 0)),
            btime=None if entry.get("btime") is None else int(entry["btime"]),
        )


def journal_clock() -> int:
    """Now, on the coarse realtime clock the kernel stamps new inodes with (never ahead of their btime)."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


def created_entry(ref: int, dev: int, ino: int, btime: int | None) -> dict[str, Any]:
    """The journal line that names the inode a create made."""
    entry: dict[str, Any] = {"op": "created", "ref": ref, "dev": dev, "ino": ino}
    if btime is not None:
        entry["btime"] = btime
    return entry


@dataclass(slots=True)
class Transaction:
    """The journal of one apply and the undo list it builds; closed by commit or rollback."""

    store: StateStore
    undo: list[Undo] = field(default_factory=list)
    since: int | None = None

    @classmethod
    def begin(cls, store: StateStore, header: dict[str, Any]) -> Transaction:
        since = journal_clock()
        store.journal_open({**header, "since": since})
        return cls(store, since=since)

    def record(self, item: Undo) -> Undo:
        """Journal ``item`` *before* the change it undoes is made, and keep it for rollback."""
        item.seq = self.store.journal_write(item.to_entry())
        item.since = self.since
        self.undo.append(item)
        return item

    def created(self, item: Undo, dev: int, ino: int, btime: int | None = None) -> None:
        """Record which inode (and birth time) a journaled create made, so undo removes only that one."""
        item.dev, item.ino, item.btime = dev, ino, btime
        self.store.journal_write(created_entry(item.seq, dev, ino, btime))

    def undone(self, item: Undo) -> None:
        self.store.journal_write({"op": "undone", "ref": item.seq})

    def abandon(self, item: Undo) -> None:
        """The change ``item`` announced was never made (its syscall failed): nothing to undo."""
        self.undone(item)
        self.undo.remove(item)

    def close(self, *, remove: bool) -> None:
        self.store.journal_close(remove=remove)
