"""Durable state on tmpfs: the committed state file, the in-flight journal, the lock.

Mounts do not survive a reboot, so neither does this: it lives in
``/run/mountplan`` (root), ``$XDG_RUNTIME_DIR/mountplan`` or ``--state-dir``.
Per plan instance (plan name + root identities) there are three files:

``NAME.state.json``  what mountplan manages, replaced atomically (write, fsync, rename)
``NAME.journal``     one JSON line per change, appended with a single write(2)
                     *before* and *after* each mutating syscall; a process killed
                     at any point leaves enough to undo exactly what it did
``NAME.lock``        flock'ed for the whole run; holds the holder's pid and command

A whole-file rewrite per step would make apply quadratic; an O_APPEND line costs
one small write. The page cache outlives a killed process, which is the failure
that matters here (a reboot takes the mounts with it).
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

FORMAT = 1


#: One encoder for journal lines: json.dumps with options builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_quote = json.encoder.encode_basestring_ascii


def _journal_line(seq: int, entry: dict[str, Any]) -> str:
    """One compact JSON object per line, ``seq`` first.

    Journal entries are flat (names, paths, ids, flags), written a few times per
    mount: formatting the scalars directly costs half of JSONEncoder.encode.
    """
    parts = [f'{{"seq":{seq}']
    for key, value in entry.items():
        kind = type(value)
        if kind is str:
            text = _quote(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif kind is int:
            text = str(value)
        else:
            text = _COMPACT.encode(value)
        parts.append(f"{_quote(key)}:{text}")
    return ",".join(parts) + "}\n"


def write_atomic(path: str, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``: write a temporary file, fsync, rename, fsync the directory.

    A reader (or a crash) sees the old file or the new one, never a part.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def default_state_dir() -> str:
    """``/run/mountplan`` for root, else ``$XDG_RUNTIME_DIR/mountplan`` (or /tmp fallback)."""
    if os.geteuid() == 0:
        return "/run/mountplan"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "mountplan")
    return f"/tmp/mountplan-{os.geteuid()}"


def instance_key(plan_name: str, roots: dict[str, dict[str, Any]]) -> str:
    """A file-name-safe key for one plan applied to one set of root inodes."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", plan_name)[:64] or "plan"
    ident = json.dumps({k: [v["dev"], v["ino"]] for k, v in sorted(roots.items())}, sort_keys=True)
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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root": self.root,
            "target": self.target,
            "mnt_id": self.mnt_id,
            "unique": self.unique,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "recursive": self.recursive,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManagedMount:
        return cls(
            name=str(data["name"]),
            root=str(data["root"]),
            target=str(data["target"]),
            mnt_id=int(data["mnt_id"]),
            unique=bool(data.get("unique", True)),
            fingerprint=str(data.get("fingerprint", "")),
            created=list(data.get("created", [])),
            recursive=bool(data.get("recursive", False)),
        )


@dataclass(slots=True)
class State:
    """The committed state of one plan instance."""

    plan: str
    roots: dict[str, dict[str, Any]]
    mounts: list[ManagedMount] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "plan": self.plan,
            "roots": self.roots,
            "mounts": [m.to_json() for m in self.mounts],
        }


class StateStore:
    """Files of one plan instance in a state directory."""

    def __init__(self, state_dir: str, key: str) -> None:
        self.state_dir = state_dir
        self.key = key
        self.state_path = os.path.join(state_dir, f"{key}.state.json")
        self.journal_path = os.path.join(state_dir, f"{key}.journal")
        self.lock_path = os.path.join(state_dir, f"{key}.lock")
        self._journal_fd: int | None = None
        self._seq = 0

    @staticmethod
    def instances(state_dir: str) -> list[str]:
        """Keys of every instance with a state file or journal in ``state_dir``."""
        try:
            names = os.listdir(state_dir)
        except FileNotFoundError:
            return []
        keys = {n.rsplit(".", 2)[0] for n in names if n.endswith((".state.json", ".journal"))}
        return sorted(keys)

    def _ensure_dir(self) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold the instance lock; wait up to ``timeout`` s, then name the holder."""
        self._ensure_dir()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ state

    def load(self) -> State | None:
        try:
            with open(self.state_path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"state file {self.state_path} is unreadable: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateError(f"state file {self.state_path} has an unknown format")
        try:
            return State(
                plan=str(data["plan"]),
                roots=dict(data["roots"]),
                mounts=[ManagedMount.from_json(m) for m in data["mounts"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"state file {self.state_path} is inconsistent: {exc!r}") from None

    def save(self, state: State) -> None:
        """Replace the state file atomically; an empty state removes it."""
        self._ensure_dir()
        if not state.mounts:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_path)
            return
        # Compact on purpose: indent= makes json fall back to its pure-Python
        # encoder, a real cost for thousands of mounts (`jq .` reads it fine).
        data = json.dumps(state.to_json(), sort_keys=True, separators=(",", ":")).encode()
        write_atomic(self.state_path, data, 0o600)

    # ------------------------------------------------------------------ journal

    def journal_open(self, header: dict[str, Any]) -> None:
        """Start a transaction's journal (a header line names roots for recovery)."""
        self._ensure_dir()
        self._journal_fd = os.open(
            self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        self._seq = 0
        self.journal_write({"op": "begin", **header})

    def journal_write(self, entry: dict[str, Any]) -> int:
        """Append one entry with a single write(2); return its sequence number."""
        if self._journal_fd is None:
            raise StateError("journal is not open")
        self._seq += 1
        line = _journal_line(self._seq, entry)
        os.write(self._journal_fd, line.encode())
        return self._seq

    def journal_close(self, *, remove: bool) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.journal_path)

    def journal_read(self) -> list[dict[str, Any]]:
        """Entries of a journal left behind; a torn last line (killed mid-write) is dropped."""
        try:
            with open(self.journal_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        entries = []
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries
