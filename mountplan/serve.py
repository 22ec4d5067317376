"""Worker mode: one long-lived mountplan process applies one plan for many clients over a unix socket.

The protocol (docs/embedding.md, "Worker mode") is one JSON object per
``SOCK_SEQPACKET`` message, so there is no framing to parse and the root fds a
request carries (``SCM_RIGHTS``) belong to exactly that request. Each connection
gets a thread; each ``apply`` is one plan instance, held through
:meth:`Engine.session` (state lock held, ``session`` journal entry written) until
the client asks for ``destroy`` or its connection ends, whichever comes first.
A ``run`` request is one whole sandboxed action in a forked child
(:mod:`mountplan.serve_run`); requests are read and checked by :mod:`mountplan.serve_requests`.

Layering: above the public API, below the CLI. The CLI (``mountplan serve``)
parses arguments, configures logging and handles signals; this module only serves.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mountplan._log import EventLogger, structured_logger
from mountplan.engine import ApplyResult, Engine
from mountplan.errors import ExecutionError, LockError, MountplanError
from mountplan.model import Plan
from mountplan.serve_requests import (
    FORMAT_VERSION,
    BadRequest,
    RunRequest,
    close_all,
    no_fds,
    parse,
    parse_run,
    roots_of,
)
from mountplan.serve_run import start_run, wait_run, warm

__all__ = ["FORMAT_VERSION", "MAX_FDS", "MAX_MESSAGE", "Server"]

#: The longest message either way, in bytes (requests longer are refused, replies never are).
MAX_MESSAGE = 65536
#: The most fds one request may carry.
MAX_FDS = 16

_stdlib_log = logging.getLogger("mountplan")
_events: EventLogger = structured_logger(_stdlib_log)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(slots=True)
class _Action:
    """One applied plan instance: the session holding it and the root fds it was given."""

    action_id: str
    key: tuple[tuple[str, int, int], ...]
    fds: list[int]
    session: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        """Destroy the mounts (leave the session), then close the fds, even when destroy fails."""
        try:
            self.session.close()
        finally:
            close_all(self.fds)


def _error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of a reply for ``exc``."""
    if isinstance(exc, BadRequest):
        return {"code": exc.code, "type": "RequestError", "message": str(exc)}
    if isinstance(exc, MountplanError):
        doc: dict[str, Any] = {"code": exc.exit_code, "type": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, ExecutionError):
            doc["leftovers"] = [str(item) for item in getattr(exc, "leftovers", ())]
        return doc
    return {"code": 1, "type": "InternalError", "message": f"{type(exc).__name__}: {exc}"}


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _apply_reply(base: dict[str, Any], action_id: str, result: ApplyResult) -> bytes:
    lists = {
        "created": list(result.created),
        "updated": list(result.updated),
        "replaced": list(result.replaced),
        "unchanged": list(result.unchanged),
    }
    doc = {
        **base, "ok": True, "action": action_id, "plan": result.plan, "state_file": result.state_file,
        "summary": {name: len(items) for name, items in lists.items()},
    }
    full = _encode({**doc, **lists})
    # The lists are informative; the counts always fit, the names only when the reply stays in one message.
    return full if len(full) <= MAX_MESSAGE else _encode({**doc, "truncated": True})


def _check_socket_path(path: str) -> None:
    """Make ``path`` free to bind: remove a dead server's socket, refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a server that died without cleaning up
        return
    except OSError as exc:
        # EPROTOTYPE: a stream socket someone else owns; not ours to remove.
        raise FileExistsError(exc.errno, f"is a socket mountplan cannot use ({exc.strerror})", path) from None
    finally:
        probe.close()
    raise LockError(f"another server is listening on {path}")


class Server:
    """Serves ``plan`` on the unix socket ``path`` (``SOCK_SEQPACKET``); see docs/embedding.md.

    ``bind()`` creates the socket (mode 0600); ``serve_forever()`` accepts
    clients until ``stop()``, then tears down every live action and removes the
    socket. ``stop()`` may be called from any thread or a signal handler.
    Peers whose uid is neither the server's effective uid nor 0 are refused:
    a client picks where the plan is mounted.
    """

    def __init__(self, plan: Plan, path: str, *, engine: Engine | None = None, state_dir: str | None = None,
                 lock_timeout: float = 30.0, lazy: bool = False) -> None:
        self.plan = plan
        self.path = path
        self.engine: Engine = engine or Engine(state_dir=state_dir, lock_timeout=lock_timeout, lazy=lazy)
        self._listener: socket.socket | None = None
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._live: dict[tuple[tuple[str, int, int], ...], str] = {}
        self._connections: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._numbers = itertools.count(1)
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    def bind(self) -> None:
        """Create and listen on the socket; clients may connect once this returns."""
        _check_socket_path(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # the socket is 0600 from the moment it exists
        try:
            listener.bind(self.path)
        except BaseException:
            listener.close()
            raise
        finally:
            os.umask(old)
        listener.listen(64)
        warm(self.plan)
        self._listener = listener
        _events.info("serve.listening", socket=self.path, plan=self.plan.name, pid=os.getpid())

    def serve_forever(self) -> None:
        """Accept clients until :meth:`stop`; then tear down every action and remove the socket."""
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self._listener and not self._stopping:
                        self._accept()
        finally:
            selector.close()
            self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to end (thread- and signal-handler-safe)."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    def _shutdown(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            listener.close()
        with self._lock:
            connections = list(self._connections.values())
        for sock, _ in connections:
            # Wakes the thread blocked in recvmsg with end-of-file: it tears down as on a disconnect.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)
        _events.info("serve.stopped", socket=self.path)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, ConnectionAbortedError, InterruptedError):
            return
        number = next(self._numbers)
        pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid not in (0, os.geteuid()):
            _events.warning("serve.refused", client=number, peer_pid=pid, peer_uid=uid)
            with contextlib.suppress(OSError):
                sock.sendmsg([_encode({
                    "format_version": FORMAT_VERSION, "ok": False,
                    "error": {"code": 2, "type": "RequestError",
                              "message": f"uid {uid} may not use this server (only uid {os.geteuid()} and 0)"},
                })], [], socket.MSG_NOSIGNAL)
            sock.close()
            return
        thread = threading.Thread(target=self._serve_client, args=(number, sock, pid), name=f"serve-client-{number}",
                                  daemon=True)
        with self._lock:
            self._connections[number] = (sock, thread)
        thread.start()

    # ------------------------------------------------------------------ one client

    def _serve_client(self, number: int, sock: socket.socket, pid: int) -> None:
        actions: dict[str, _Action] = {}
        counter = itertools.count(1)
        _events.debug("serve.client", client=number, peer_pid=pid)
        try:
            while True:
                try:
                    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
                except OSError:
                    break  # ECONNRESET and the like: the client is gone
                if not data and not fds:
                    break  # end of file: the client closed or died
                reply = self._handle(number, actions, counter, data, fds, flags, sock)
                try:
                    sock.sendmsg([reply], [], socket.MSG_NOSIGNAL)
                except OSError:
                    break  # gone while we worked: tear down what it had
        finally:
            for action in reversed(list(actions.values())):
                self._end(action, reason="disconnect")
            sock.close()
            with self._lock:
                self._connections.pop(number, None)

    def _handle(self, number: int, actions: dict[str, _Action], counter: itertools.count[int], data: bytes,
                fds: list[int], flags: int, sock: socket.socket) -> bytes:
        base: dict[str, Any] = {"format_version": FORMAT_VERSION}
        kept = False
        try:
            if flags & socket.MSG_TRUNC:
                raise BadRequest(f"request longer than {MAX_MESSAGE} bytes")
            if flags & socket.MSG_CTRUNC:
                raise BadRequest(f"more than {MAX_FDS} fds attached to one request")
            doc = parse(data)
            if "id" in doc:
                base["id"] = doc["id"]
            op = doc.get("op")
            if "op" in doc:
                base["op"] = op
            if op == "ping":
                no_fds(fds, op)
                return _encode({**base, "ok": True, "plan": self.plan.name,
                                "roots": sorted(r.name for r in self.plan.roots), "pid": os.getpid()})
            if op == "apply":
                kept = True  # from here the fds belong to the action, or _apply closes them
                action_id, result = self._apply(number, actions, next(counter), doc, fds)
                return _apply_reply(base, action_id, result)
            if op == "run":
                request = parse_run(doc, fds)
                return _encode({**base, "ok": True, "status": self._run(number, request, fds, sock)})
            if op == "destroy":
                no_fds(fds, op)
                wanted = doc.get("action")
                if not isinstance(wanted, str) or wanted not in actions:
                    raise BadRequest(f"destroy: no live action {wanted!r} on this connection")
                self._end(actions.pop(wanted), reason="request")
                return _encode({**base, "ok": True, "action": wanted})
            raise BadRequest(f"unknown op {op!r} (one of: apply, destroy, ping, run)")
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply; unexpected ones are logged
            if not isinstance(exc, MountplanError | BadRequest):
                _events.exception("serve.internal_error", client=number)
            return _encode({**base, "ok": False, "error": _error(exc)})
        finally:
            if not kept:
                close_all(fds)

    def _apply(self, number: int, actions: dict[str, _Action], seq: int, doc: Mapping[str, Any],
               fds: list[int]) -> tuple[str, ApplyResult]:
        """Enter a session for the roots the request carries; the fds then belong to the action."""
        try:
            roots = roots_of(doc, fds)
            action = _Action(f"{number}.{seq}", _key(roots), fds)
            self._claim(action.key, action.action_id)
        except BaseException:
            close_all(fds)
            raise
        try:
            result = action.session.enter_context(self.engine.session(self.plan, roots))
        except BaseException:
            self._release(action)
            close_all(fds)
            raise
        actions[action.action_id] = action
        _events.info("serve.applied", client=number, action=action.action_id, created=len(result.created))
        return action.action_id, result

    def _run(self, number: int, request: RunRequest, fds: list[int], sock: socket.socket) -> int:
        """A whole action in a forked child (:mod:`mountplan.serve_run`); the command's exit status."""
        key, run_id = _key(request.roots), f"{number}.run"
        self._claim(key, run_id)
        try:
            child = start_run(self.plan, request, state_dir=self.engine.state_dir,
                              lock_timeout=self.engine.lock_timeout, server_fds=self._own_fds())
            _events.info("serve.run", client=number, pid=child.pid, command=request.argv[0])
            status = wait_run(child, sock)
        finally:
            self._unclaim(key, run_id)
        _events.info("serve.ran", client=number, status=status)
        return status

    def _own_fds(self) -> list[int]:
        """The server's own fds (listener, wake-up pipe, every connection), which a run's child closes."""
        with self._lock:
            fds = [sock.fileno() for sock, _ in self._connections.values()]
        if self._listener is not None:
            fds.append(self._listener.fileno())
        return [*fds, self._wake_read, self._wake_write]

    def _claim(self, key: tuple[tuple[str, int, int], ...], holder: str) -> None:
        """Register ``holder`` on these roots, or refuse at once: the engine's root lock would only
        make this client wait for lock_timeout."""
        with self._lock:
            current = self._live.setdefault(key, holder)
        if current != holder:
            raise LockError(f"these roots are in use by action {current} of this server; destroy it first")

    def _unclaim(self, key: tuple[tuple[str, int, int], ...], holder: str) -> None:
        with self._lock:
            if self._live.get(key) == holder:
                del self._live[key]

    def _release(self, action: _Action) -> None:
        self._unclaim(action.key, action.action_id)

    def _end(self, action: _Action, *, reason: str) -> None:
        """Destroy an action's mounts; a failure leaves the session journal for recover (docs/embedding.md)."""
        try:
            action.close()
        except Exception as exc:
            _events.error("serve.destroy_failed", action=action.action_id, reason=reason, error=str(exc))
            if reason == "request":
                raise
        else:
            _events.info("serve.destroyed", action=action.action_id, reason=reason)
        finally:
            self._release(action)


def _key(roots: Mapping[str, int]) -> tuple[tuple[str, int, int], ...]:
    """What one plan instance of this server is: each root's name, device and inode."""
    return tuple(sorted((name, *_identity(fd)) for name, fd in roots.items()))


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
