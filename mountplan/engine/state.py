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
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import stat
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mountplan.errors import LockError, StateError

__all__ = [
    "FORMAT", "ForeignStateError", "InstanceInfo", "JournalContents", "MalformedLine", "ManagedMount",
    "Scope", "State", "StateStore", "current_scope", "default_state_dir", "instance_key",
    "open_state_dir", "write_atomic",
]

#: 2: the file carries the boot and mount namespace it was written in.
FORMAT = 2

#: A state file or journal larger than this is not one of ours.
MAX_FILE_BYTES = 256 * 1024 * 1024

#: ``NS_GET_MNTNS_ID`` = _IOR(0xb7, 5, __u64): a 64-bit mount namespace id never reused within a boot (6.8+).
_NS_GET_MNTNS_ID = 0x8008B705


class ForeignStateError(StateError):
    """A state file or journal was written in another boot or mount namespace."""


def _error(op: str, path: str, exc: OSError) -> StateError:
    """One wording for every failed file operation: what, where, and the errno."""
    code = exc.errno or 0
    return StateError(f"cannot {op} {path}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


# ---------------------------------------------------------------------- scope


@dataclass(frozen=True, slots=True)
class Scope:
    """The boot and mount namespace a state file or journal belongs to."""

    boot_id: str
    mntns: int  # st_ino of /proc/thread-self/ns/mnt (reused once a namespace dies)
    mntns_id: int | None = None  # NS_GET_MNTNS_ID, never reused within a boot; None before 6.8

    def to_json(self) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "mntns": self.mntns, "mntns_id": self.mntns_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scope | None:
        """The scope recorded in ``data``, or None when it has none (or a malformed one)."""
        boot, ino, uid = data.get("boot_id"), data.get("mntns"), data.get("mntns_id")
        if type(boot) is not str or type(ino) is not int or not (uid is None or type(uid) is int):
            return None
        return cls(boot, ino, uid)

    def mismatch(self, now: Scope) -> str | None:
        """Why a file of this scope must not be acted on ``now``, or None when it may."""
        if self.boot_id != now.boot_id:
            return f"was written in another boot (boot id {self.boot_id}, this boot is {now.boot_id})"
        if self.mntns != now.mntns or (None not in (self.mntns_id, now.mntns_id) and self.mntns_id != now.mntns_id):
            return (f"was written in another mount namespace (mnt:[{self.mntns}] id {self.mntns_id}, "
                    f"this process is in mnt:[{now.mntns}] id {now.mntns_id})")
        return None


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError as exc:
        raise _error("read", "/proc/sys/kernel/random/boot_id", exc) from None


def current_scope() -> Scope:
    """This boot and this thread's mount namespace (read every time: ``run --unshare`` changes it)."""
    path = "/proc/thread-self/ns/mnt"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error("open", path, exc) from None
    try:
        ino = os.fstat(fd).st_ino
        buf = bytearray(8)
        try:
            fcntl.ioctl(fd, _NS_GET_MNTNS_ID, buf)
            ns_id: int | None = struct.unpack("<Q", buf)[0]
        except OSError:  # ENOTTY before 6.8: the inode number alone names the namespace
            ns_id = None
    finally:
        os.close(fd)
    return Scope(_boot_id(), ino, ns_id)


def _refuse(path: str, what: str, scope: Scope | None) -> None:
    """Raise ForeignStateError unless ``scope`` is this boot and mount namespace."""
    why = "carries no boot and mount namespace id" if scope is None else scope.mismatch(current_scope())
    if why is not None:
        raise ForeignStateError(
            f"{what} {path} {why}; refusing to act on it: the mount ids it records name nothing here. "
            "Use it from the namespace that wrote it, or remove it once its mounts are gone"
        )


# ---------------------------------------------------------------------- journal lines

#: One encoder for journal lines: json.dumps with options builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_quote = json.encoder.encode_basestring_ascii


def journal_line(seq: int, entry: dict[str, Any]) -> str:
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


def _ints(*values: Any) -> bool:
    return all(type(v) is int and v >= 0 for v in values)


def _is_root(v: Any) -> bool:
    return isinstance(v, dict) and type(v.get("path")) is str and _ints(v.get("dev"), v.get("ino"))


def _is_restore(v: Any) -> bool:
    return (isinstance(v, dict) and _ints(v.get("attrs"), v.get("clear")) and type(v.get("propagation")) is str
            and isinstance(v.get("options"), dict)
            and all(type(x) is str or x is None for x in v["options"].values()))


def _optional(e: dict[str, Any], key: str, kind: type) -> bool:
    return key not in e or type(e[key]) is kind


def _submounts(e: dict[str, Any]) -> bool:
    return "submounts" not in e or isinstance(e["submounts"], list) and _ints(*e["submounts"])


def _entry_problem(e: Any) -> str | None:
    """Why a decoded journal line is not an entry the engine can act on, or None.

    The fields and types are the ones executor.py writes; recovery trusts them.
    """
    if not isinstance(e, dict):
        return "not a JSON object"
    op = e.get("op")
    if not _ints(e.get("seq")) or type(op) is not str:
        return "'seq' is not a non-negative integer or 'op' is not a string"
    if op == "begin":
        roots = e.get("roots")
        ok = isinstance(roots, dict) and all(type(k) is str and _is_root(v) for k, v in roots.items())
        return None if ok and _optional(e, "plan", str) and _optional(e, "recover", bool) else "malformed header"
    if op in ("mount", "mkdir", "mkfile", "update"):
        if not (type(e.get("root")) is str and type(e.get("path")) is str and _optional(e, "mount", str)
                and _optional(e, "recursive", bool) and _optional(e, "unique", bool) and _submounts(e)
                and (_ints(e["mnt_id"]) if "mnt_id" in e else op in ("mkdir", "mkfile"))):
            return f"malformed {op!r} entry (root, path, mount, mnt_id, unique, recursive, submounts)"
        return None if op != "update" or _is_restore(e.get("restore")) else "malformed 'restore' of an update"
    if op == "created":
        return None if _ints(e.get("ref"), e.get("dev"), e.get("ino")) else "malformed 'created' entry"
    if op in ("undone", "attached"):
        return None if _ints(e.get("ref")) and _submounts(e) else f"malformed {op!r} entry"
    return None  # an op this version does not know: passed on, the engine decides (seq and op are sound)


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A journal line that is not a usable entry: its 1-based number, its start, and why."""

    line: int
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class JournalContents:
    """What a journal holds: its usable entries, its malformed lines, and whether the last line was torn.

    A torn last line (no newline, not JSON) is what a process killed mid-write
    leaves: normal, not malformed.
    """

    entries: tuple[dict[str, Any], ...]
    malformed: tuple[MalformedLine, ...]
    torn: bool


def parse_journal(raw: bytes) -> JournalContents:
    """Split a journal into usable entries and malformed lines; never raises on content."""
    lines = raw.split(b"\n")
    entries: list[dict[str, Any]] = []
    malformed: list[MalformedLine] = []
    torn = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as exc:
            if number == len(lines):  # no newline after it: the write was cut short
                torn = True
                continue
            why: str | None = f"not JSON ({str(exc)[:80]})"
        else:
            why = _entry_problem(entry)
        if why is None:
            entries.append(entry)
        else:
            malformed.append(MalformedLine(number, line[:120].decode("utf-8", "replace"), why))
    return JournalContents(tuple(entries), tuple(malformed), torn)


# ---------------------------------------------------------------------- directory and files


def default_state_dir() -> str:
    """``/run/mountplan`` for root, else ``$XDG_RUNTIME_DIR/mountplan``; never a shared /tmp path.

    A fixed name in /tmp could be pre-created by another user, who would then
    own our lock, state and journal.
    """
    if os.geteuid() == 0:
        return "/run/mountplan"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "mountplan")
    raise StateError("no state directory: XDG_RUNTIME_DIR is not set; pass --state-dir DIR (a directory you own, "
                     "on tmpfs) or set XDG_RUNTIME_DIR")


def _hint() -> str:
    return "pass --state-dir DIR (a directory you own)" + ("" if os.geteuid() == 0 else " or set XDG_RUNTIME_DIR")


def open_state_dir(path: str, *, create: bool = True) -> int:
    """Open (creating the last component, mode 0700) and vet the state directory; return its fd.

    Refused unless owned by the caller and not group/other-writable: anyone who
    can write it can plant a journal that makes us unmount or delete things.
    """
    parent, name = os.path.split(path.rstrip("/")) if path.rstrip("/") else ("/", ".")
    try:
        pfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"{_error('open the parent of state directory', path, exc)}; {_hint()}") from None
    try:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # lost a race with another mountplan: vetted below
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, flags, dir_fd=pfd)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not create:
            raise
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateError(f"state directory {path} is a symlink or not a directory; {_hint()}") from None
        raise StateError(f"{_error('open state directory', path, exc)}; {_hint()}") from None
    finally:
        os.close(pfd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise StateError(
            f"state directory {path} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: "
            f"it must be owned by uid {os.geteuid()} and writable by nobody else, or another user could "
            f"plant the files mountplan acts on; fix its owner and mode or {_hint()}"
        )
    return fd


def _open_file(dir_fd: int, name: str, flags: int, shown: str) -> int:
    """Open a file of the state directory; refuse anything but a regular file we own.

    O_NOFOLLOW: a planted symlink is not followed to a victim's file; O_NONBLOCK:
    a FIFO in its place does not hang the open.
    """
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.ETXTBSY):
            with contextlib.suppress(OSError):
                kind = _kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
                raise StateError(f"{shown} is {kind}, not a regular file; refusing to use it") from None
        raise _error("open", shown, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        what = f"is {_kind(st.st_mode)}, not a regular file" if not stat.S_ISREG(st.st_mode) else \
            f"is owned by uid {st.st_uid}, not {os.geteuid()}"
        raise StateError(f"{shown} {what}; refusing to use it")
    return fd


def _read_all(fd: int, shown: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise StateError(f"{shown} is larger than {MAX_FILE_BYTES} bytes; not one of mountplan's files")
    except OSError as exc:
        raise _error("read", shown, exc) from None
    return b"".join(chunks)


def write_atomic(path: str, data: bytes, mode: int, *, dir_fd: int | None = None, durable: bool = True) -> None:
    """Replace ``path`` (relative to ``dir_fd`` if given) with ``data``: temp file, rename.

    A reader (or a killed writer) sees the old file or the new one, never a part.
    Only a regular file is ever replaced (``plan -o /dev/full`` must not swap out
    the device). Every failure is a StateError and leaves no temporary file.
    ``durable`` adds two fsyncs that matter only on a disk: the file's, so a
    power loss after the rename cannot leave an empty file under the new name
    (ext4/xfs delayed allocation), and the directory's, so the rename itself
    survives. Saved plans need them; the state, on tmpfs and refused after a
    reboot anyway (its boot id), does not.
    """
    name = os.path.basename(path)
    own = dir_fd is None
    if own:
        try:
            dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _error("open the directory of", path, exc) from None
    assert dir_fd is not None
    try:
        if name in ("", ".", ".."):
            raise StateError(f"refusing to replace {path}: it is a directory")
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise _error("stat", path, exc) from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise StateError(f"refusing to replace {path}: it is {_kind(st.st_mode)}; only a regular file is replaced")
        # Random, hidden, O_EXCL|O_NOFOLLOW: a planted name cannot redirect the write.
        tmp = f".{name[:200]}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            raise _error("create a temporary file beside", path, exc) from None
        op = "write"
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    op = "fsync"
                    os.fsync(fd)
            finally:
                os.close(fd)
            op = "rename a temporary file onto"
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            if isinstance(exc, OSError):
                raise _error(op, path, exc) from None
            raise
        if durable:
            try:
                os.fsync(dir_fd)
            except OSError as exc:
                raise _error("fsync the directory of", path, exc) from None
    finally:
        if own:
            os.close(dir_fd)


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

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.name, "root": self.root, "target": self.target, "mnt_id": self.mnt_id,
            "unique": self.unique, "fingerprint": self.fingerprint, "created": self.created,
            "recursive": self.recursive, "submounts": list(self.submounts),
        }
        if self.proof is not None:
            data["proof"] = self.proof
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManagedMount:
        created = data.get("created", [])
        if not isinstance(created, list) or not all(isinstance(c, dict) for c in created):
            raise TypeError(f"'created' of {data.get('name')!r} is not a list of objects")
        for key in ("name", "root", "target"):
            if type(data[key]) is not str:
                raise TypeError(f"{key!r} is not a string")
        if not _ints(data["mnt_id"]) or not _submounts(data):
            raise TypeError(f"'mnt_id' or 'submounts' of {data['name']!r} is not a (list of) integer(s)")
        return cls(
            name=data["name"], root=data["root"], target=data["target"], mnt_id=data["mnt_id"],
            unique=bool(data.get("unique", True)), fingerprint=str(data.get("fingerprint", "")),
            created=list(created), recursive=bool(data.get("recursive", False)),
            submounts=tuple(data.get("submounts", ())), proof=_proof(data.get("proof")),
        )


def _proof(value: Any) -> list[int | None] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 4 or not _ints(*value[:3])
            or not (value[3] is None or type(value[3]) is int)):
        raise TypeError("'proof' is not [major, minor, ino, btime]")
    return list(value)


@dataclass(slots=True)
class State:
    """The committed state of one plan instance."""

    plan: str
    roots: dict[str, dict[str, Any]]
    mounts: list[ManagedMount] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "plan": self.plan, "roots": self.roots, "mounts": [m.to_json() for m in self.mounts]}


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A plan instance found in a state directory; ``foreign`` says why it is not ours to act on."""

    key: str
    foreign: str | None = None


_SUFFIXES = (".state.json", ".journal", ".lock")


class StateStore:
    """Files of one plan instance in a state directory, each reached through a vetted directory fd."""

    def __init__(self, state_dir: str, key: str, *, dir_fd: int | None = None) -> None:
        self.state_dir = state_dir
        self.key = key
        self.state_path = os.path.join(state_dir, f"{key}.state.json")
        self.journal_path = os.path.join(state_dir, f"{key}.journal")
        self.lock_path = os.path.join(state_dir, f"{key}.lock")
        self._dir_fd = dir_fd  # borrowed when given, else held only while locked()
        self._journal_fd: int | None = None
        self._seq = 0

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
            return _open_file(dfd, os.path.basename(path), flags, path)

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
            raw = _read_all(fd, self.state_path)
        finally:
            os.close(fd)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StateError(f"state file {self.state_path} is unreadable: {str(exc)[:200]}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise StateError(f"state file {self.state_path} has format {found!r}; this mountplan reads {FORMAT}")
        _refuse(self.state_path, "state", Scope.from_json(data.get("scope") or {}))
        try:
            if not isinstance(data["roots"], dict) or not isinstance(data["mounts"], list):
                raise TypeError("'roots' is not an object or 'mounts' is not a list")
            return State(plan=str(data["plan"]), roots=dict(data["roots"]),
                         mounts=[ManagedMount.from_json(m) for m in data["mounts"]])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"state file {self.state_path} is inconsistent: {exc!r}") from None

    def save(self, state: State) -> None:
        """Replace the state file atomically; an empty state removes it."""
        if not state.mounts:
            self._unlink(self.state_path)
            return
        # Compact on purpose: indent= makes json fall back to its pure-Python
        # encoder, a real cost for thousands of mounts (`jq .` reads it fine).
        doc = {**state.to_json(), "scope": current_scope().to_json()}
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
            raise _error("remove", path, exc) from None

    # ------------------------------------------------------------------ journal

    def journal_open(self, header: dict[str, Any]) -> None:
        """Start a transaction's journal; its header names the roots, the boot and the namespace."""
        self._journal_fd = self._open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._seq = 0
        try:
            self.journal_write({"op": "begin", **header, **current_scope().to_json()})
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
            raise _error("append to journal", self.journal_path, exc) from None
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
            raw = _read_all(fd, self.journal_path)
        finally:
            os.close(fd)
        contents = parse_journal(raw)
        for entry in contents.entries:
            if entry["op"] == "begin":
                _refuse(self.journal_path, "journal", Scope.from_json(entry))
        return contents

    def journal_read(self) -> list[dict[str, Any]]:
        """The well-formed entries of a journal left behind (see :meth:`journal_load`)."""
        return list(self.journal_load().entries)
