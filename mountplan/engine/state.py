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

This module is the store; what the state file holds (:class:`State`,
:class:`ManagedMount`, :func:`instance_key`) is :mod:`.state_data`, importable
from here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from mountplan.errors import LockError, StateError

from .journal import JournalContents, MalformedLine, journal_line, parse_journal
from .managed_object import ManagedObject
from .scope import ForeignStateError, Scope, current_scope, refuse_foreign
from .state_data import FORMAT, InstanceInfo, ManagedMount, State, instance_key
from .statefs import (
    default_state_dir,
    file_error,
    flock_within,
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
            if not flock_within(fd, timeout):
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
                raise LockError(
                    f"state {self.key} is locked by another mountplan ({holder}); "
                    f"waited {timeout:g}s (see --lock-timeout)"
                )
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
