"""Durable state on tmpfs: the committed state file, the in-flight journal, the lock.

Mounts do not survive a reboot, so neither does this: it lives in
``/run/mountplan`` (root), ``$XDG_RUNTIME_DIR/mountplan`` or ``--state-dir``.
Per plan instance (plan name + root identities + mount namespace) there are three files:

``NAME.state.json``  what mountplan manages, replaced atomically (temp file + rename)
``NAME.journal``     one JSON line per change, appended with a single write(2)
                     *before* and *after* each mutating syscall; a process killed
                     at any point leaves enough to undo exactly what it did
``NAME.lock``        flock'ed for the whole run; holds the holder's pid and command

The directory is trusted only when the caller owns it and nobody else can write
it, checked on an open fd (as tmux and ssh-agent check their socket directory);
every file in it is opened relative to that fd with ``O_NOFOLLOW``, and must be
a regular file owned by the caller. A planted symlink, FIFO or directory is an
error, never followed, truncated or waited on.

State and journal name the boot and mount namespace they were written in
(:class:`Scope`): mount ids mean nothing in another boot or namespace, so a file
from elsewhere is refused (:class:`ForeignStateError`), never acted on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mountplan.errors import LockError, StateError

from .journal import (
    JournalContents,
    MalformedLine,
    all_uints,
    journal_line,
    parse_journal,
    parse_proof,
    valid_submounts,
)
from .managed_object import ManagedObject
from .scope import ForeignStateError, Scope, current_scope, refuse_foreign
from .statefs import (
    default_state_dir,
    file_error,
    open_in_dir,
    open_state_dir,
    read_all,
    write_atomic,
)

__all__ = [
    "FORMAT", "ForeignStateError", "InstanceInfo", "JournalContents", "MalformedLine", "ManagedMount", "ManagedObject",
    "Scope", "State", "StateStore", "current_scope", "default_state_dir", "instance_key",
    "open_state_dir", "write_atomic",
]

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


# ---------------------------------------------------------------------- data


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
            idmap=_parse_idmap(data.get("idmap")),
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


_SUFFIXES = (".state.json", ".journal", ".lock")


class StateStore:
    """Files of one plan instance in a state directory, each reached through a vetted directory fd."""

    def __init__(self, state_dir: str, key: str, *, dir_fd: int | None = None, scope: Scope | None = None) -> None:
        self.state_dir: str = state_dir
        self.key: str = key
        self.state_path: str = os.path.join(state_dir, f"{key}.state.json")
        self.journal_path: str = os.path.join(state_dir, f"{key}.journal")
        self.lock_path: str = os.path.join(state_dir, f"{key}.lock")
        self._dir_fd = dir_fd  # borrowed when given, else held only while locked()
        self._journal_fd: int | None = None
        self._seq = 0
        self._scope = scope

    def scope(self) -> Scope:
        """The boot and mount namespace this store's operation runs in, read once per store.

        A store serves one operation on one thread, and the engine never changes
        namespace in the middle of one: reading /proc/thread-self/ns/mnt (four
        syscalls) for each file it writes or checks would earn nothing.
        """
        if self._scope is None:
            self._scope = current_scope()
        return self._scope

    @contextlib.contextmanager
    def _dir(self, *, create: bool = True) -> Iterator[int]:
        """The vetted state directory fd: the one held by :meth:`locked`, else one for this call only.

        Not cached beyond the lock: an Engine (or a long-lived caller) must not
        accumulate directory fds, one per store.
        """
        if self._dir_fd is not None:
            yield self._dir_fd
            return
        fd = open_state_dir(self.state_dir, create=create)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open(self, path: str, flags: int) -> int:
        """Open one of this instance's files; FileNotFoundError (also for a missing directory) when absent."""
        with self._dir(create=bool(flags & os.O_CREAT)) as dfd:
            return open_in_dir(dfd, os.path.basename(path), flags, path)

    @staticmethod
    def scan(state_dir: str) -> list[InstanceInfo]:
        """Every instance with a state file or journal in ``state_dir``, each marked if foreign.

        A missing directory has none. Other defects (malformed files) are left
        for :meth:`load` and :meth:`journal_load` to report.
        """
        try:
            dfd = open_state_dir(state_dir, create=False)
        except FileNotFoundError:
            return []
        try:
            names = os.listdir(dfd)
            keys = sorted({n[: -len(s)] for n in names for s in _SUFFIXES[:2] if n.endswith(s) and n[0] != "."})
            found: list[InstanceInfo] = []
            for key in keys:
                store = StateStore(state_dir, key, dir_fd=dfd)
                try:
                    store.journal_load()
                    store.load()
                    found.append(InstanceInfo(key))
                except ForeignStateError as exc:
                    found.append(InstanceInfo(key, str(exc)))
                except StateError:
                    found.append(InstanceInfo(key))
            return found
        finally:
            os.close(dfd)

    @staticmethod
    def instances(state_dir: str) -> list[str]:
        """Keys of the instances of this boot and mount namespace (see :meth:`scan` for the others)."""
        return [info.key for info in StateStore.scan(state_dir) if info.foreign is None]

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold the instance lock; wait up to ``timeout`` s, then name the holder."""
        own_dir = self._dir_fd is None
        dfd = open_state_dir(self.state_dir) if self._dir_fd is None else self._dir_fd
        self._dir_fd = dfd  # every file of the run is opened through this one vetted fd
        try:
            fd = self._open(self.lock_path, os.O_RDWR | os.O_CREAT)  # no O_TRUNC: the holder's text stays
        except BaseException:
            if own_dir:
                os.close(dfd)
                self._dir_fd = None
            raise
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
                        raise LockError(
                            f"state {self.key} is locked by another mountplan ({holder}); "
                            f"waited {timeout:g}s (see --lock-timeout)"
                        ) from None
                    time.sleep(0.02)
            # The holder text is a courtesy for the next waiter: a full disk must not fail the run here.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode(), 0)
            yield
        finally:
            os.close(fd)
            if own_dir:
                os.close(dfd)
                self._dir_fd = None

    # ------------------------------------------------------------------ state

    def load(self) -> State | None:
        """The committed state, None when there is none; StateError when it is unusable or foreign."""
        try:
            fd = self._open(self.state_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            raw = read_all(fd, self.state_path)
        finally:
            os.close(fd)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StateError(f"state file {self.state_path} is unreadable: {str(exc)[:200]}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise StateError(f"state file {self.state_path} has format {found!r}; this mountplan reads {FORMAT}")
        refuse_foreign(self.state_path, "state", Scope.from_json(data.get("scope") or {}), self.scope())
        try:
            if not isinstance(data["roots"], dict) or not isinstance(data["mounts"], list):
                raise TypeError("'roots' is not an object or 'mounts' is not a list")
            objects = data.get("objects", [])
            if not isinstance(objects, list):
                raise TypeError("'objects' is not a list")
            return State(plan=str(data["plan"]), roots=dict(data["roots"]),
                         mounts=[ManagedMount.from_json(m) for m in data["mounts"]],
                         objects=[ManagedObject.from_json(o) for o in objects])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"state file {self.state_path} is inconsistent: {exc!r}") from None

    def save(self, state: State) -> None:
        """Replace the state file atomically; an empty state removes it."""
        if state.is_empty:
            self._unlink(self.state_path)
            return
        # Compact on purpose: indent= makes json fall back to its pure-Python
        # encoder, a real cost for thousands of mounts (`jq .` reads it fine).
        doc = {**state.to_json(), "scope": self.scope().to_json()}
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        with self._dir() as dfd:
            write_atomic(self.state_path, data, 0o600, dir_fd=dfd, durable=False)

    def _unlink(self, path: str) -> None:
        try:
            with self._dir(create=False) as dfd:
                os.unlink(os.path.basename(path), dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise file_error("remove", path, exc) from None

    # ------------------------------------------------------------------ journal

    def journal_open(self, header: dict[str, Any]) -> None:
        """Start a transaction's journal; its header names the roots, the boot and the namespace."""
        self._journal_fd = self._open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._seq = 0
        try:
            self.journal_write({"op": "begin", **header, **self.scope().to_json()})
        except BaseException:
            self.journal_close(remove=False)  # an empty journal is harmless: the next reader removes it
            raise

    def journal_write(self, entry: dict[str, Any]) -> int:
        """Append one entry with a single write(2); return its sequence number.

        A short write (full filesystem) is cut back off, so a later entry never
        lands glued to half a line.
        """
        if self._journal_fd is None:
            raise StateError("journal is not open")
        data = journal_line(self._seq + 1, entry).encode()
        written = 0
        try:
            while written < len(data):
                written += os.write(self._journal_fd, data[written:])
        except OSError as exc:
            if written:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._journal_fd, os.fstat(self._journal_fd).st_size - written)
            raise file_error("append to journal", self.journal_path, exc) from None
        self._seq += 1
        return self._seq

    def journal_close(self, *, remove: bool) -> None:
        """Close the journal; ``remove`` deletes it (use this, not os.unlink on the path)."""
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if remove:
            self._unlink(self.journal_path)

    def journal_load(self) -> JournalContents:
        """A journal left behind: its well-formed entries, its malformed lines, and whether the last was torn.

        ForeignStateError when a header names another boot or mount namespace.
        """
        try:
            fd = self._open(self.journal_path, os.O_RDONLY)
        except FileNotFoundError:
            return JournalContents((), (), False)
        try:
            raw = read_all(fd, self.journal_path)
        finally:
            os.close(fd)
        contents = parse_journal(raw)
        for entry in contents.entries:
            if entry["op"] == "begin":
                refuse_foreign(self.journal_path, "journal", Scope.from_json(entry), self.scope())
        return contents

    def journal_read(self) -> list[dict[str, Any]]:
        """The well-formed entries of a journal left behind (see :meth:`journal_load`)."""
        return list(self.journal_load().entries)
