"""The worker mode's ``run`` request: a whole sandboxed action per request, in a child of the server.

The server forks one child per ``run``; the child calls :func:`mountplan.runner.run`
(apply, the command, destroy; by default in fresh namespaces, as ``mountplan run
--unshare``) with everything already imported, so an action pays no interpreter
start-up. A child and not a thread, because run owns process-wide state (signal
dispositions and mask, pid 1's reaping) that a server thread must not touch.

Lifetime: when the client's connection ends (it closed, died, or the server is
stopping) the child gets SIGTERM, which run forwards to the command before it
destroys, exactly as for ``mountplan run``; after :data:`RUN_GRACE` seconds
SIGKILL follows and the parent-death signals armed along the chain take the
sandbox down. If the server itself dies, the child gets SIGTERM from the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import pickle
import select
import signal
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from mountplan import runner
from mountplan._command import FORWARDED_SIGNALS, write_all
from mountplan._kernel.namespaces import die_with_parent
from mountplan.engine.fingerprint import compiled_for
from mountplan.errors import ExecutionError, MountplanError
from mountplan.model import Plan
from mountplan.serve_requests import RunRequest

__all__ = ["RUN_GRACE", "RunChild", "start_run", "wait_run", "warm"]

#: Seconds between the SIGTERM a vanished client's run gets and the SIGKILL.
RUN_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class RunChild:
    """A forked run: its pid and the pipe its one report arrives on."""

    pid: int
    report_fd: int


def warm(plan: Plan) -> None:
    """Do once, in the server, what every forked run would otherwise redo: compile the plan and
    import what apply loads only for planned objects."""
    compiled_for(plan)
    if plan.objects:
        import mountplan.engine.object_ops  # noqa: F401


def start_run(plan: Plan, request: RunRequest, *, state_dir: str | None, lock_timeout: float,
              server_fds: Sequence[int]) -> RunChild:
    """Fork the child that runs ``request``; the request's fds stay the caller's to close.

    ``server_fds`` (the listener, every connection) are closed in the child: the
    sandbox chain must not keep the server's socket or another client's
    connection open. Nothing else is: an embedder's log handler keeps its file.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    server = os.getpid()
    # Blocked across the fork: none of the server's handlers (stop on SIGTERM) may run in the child.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked child ends in os._exit
            os.close(read_fd)
            _child(plan, request, state_dir, lock_timeout, write_fd, server, mask, server_fds)
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise ExecutionError(
            f"run {request.argv[0]!r}: fork: {errno.errorcode.get(exc.errno or 0, exc.errno)} ({exc.strerror})"
        ) from exc
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(write_fd)
    return RunChild(pid, read_fd)


def wait_run(child: RunChild, sock: socket.socket) -> int:
    """The command's exit status once the child reported and exited; SIGTERM it if ``sock`` hangs up.

    Raises what run raised in the child (a :class:`~mountplan.errors.MountplanError`).
    """
    poller = select.poll()
    poller.register(child.report_fd, select.POLLIN)
    # Only the hang-up (POLLHUP is always reported): a request the client pipelines
    # meanwhile waits its turn, and a client that shut down only its writing side still waits.
    poller.register(sock.fileno(), 0)
    data = b""
    deadline: float | None = None
    try:
        while True:
            wait_ms = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            events = poller.poll(wait_ms)
            if not events and deadline is not None:
                _signal(child.pid, signal.SIGKILL)
                deadline = None
            for fd, _ in events:
                if fd == child.report_fd:
                    chunk = os.read(child.report_fd, 65536)
                    if not chunk:
                        return _result(child, data)
                    data += chunk
                elif deadline is None:  # the client is gone: stop the run as mountplan run stops on SIGTERM
                    poller.unregister(sock.fileno())
                    _signal(child.pid, signal.SIGTERM)
                    deadline = time.monotonic() + RUN_GRACE
    finally:
        os.close(child.report_fd)


def _result(child: RunChild, data: bytes) -> int:
    _, status = os.waitpid(child.pid, 0)
    if not data:
        raise ExecutionError(
            f"run: the child serving this request died without a report (wait status {status:#x}); "
            "its namespaces took their mounts with them, what it created in the roots stays (see docs/embedding.md)"
        )
    kind, value = pickle.loads(data)  # our own fork wrote it
    if kind == "ok":
        return int(value)
    if isinstance(value, BaseException):
        raise value
    raise RuntimeError(f"run failed in the server's child:\n{value}")


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _close_on_exec_above_stdio() -> None:
    """Mark every fd above 2 close-on-exec: the command gets the request's stdio and nothing of the
    server (a file its service manager handed down, the root fds, the report pipes); the chain of
    mountplan processes before the exec keeps them (an embedder's log file among them)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _child(plan: Plan, request: RunRequest, state_dir: str | None, lock_timeout: float, write_fd: int,
           server: int, mask: set[int | signal.Signals], server_fds: Sequence[int]) -> NoReturn:
    payload: tuple[str, object]
    null = -1
    try:
        die_with_parent(lambda: os.getppid() == server, signal.SIGTERM)
        # The server's Python objects for these fds live on in this copy of the process
        # but are never used here; with the cyclic collector off none is finalised
        # (which would close a number since reused) before _exit.
        gc.disable()
        for fd in server_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)  # an embedder's (asyncio's) wake-up fd is not ours to write to
        _close_on_exec_above_stdio()
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if None in request.stdio:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        stdio = tuple(null if fd is None else fd for fd in request.stdio)
        status = runner.run(
            plan, request.roots, request.argv, unshare=request.unshare, chroot=request.chroot, cwd=request.cwd,
            state_dir=state_dir, lock_timeout=lock_timeout, env=request.env, stdio=(stdio[0], stdio[1], stdio[2]),
        )
        payload = ("ok", status)
    except MountplanError as exc:
        payload = ("error", exc)
    except BaseException:  # noqa: BLE001 - reported to the server, which logs it as an internal error
        payload = ("internal", traceback.format_exc())
    try:
        try:
            data = pickle.dumps(payload)
        except Exception:  # noqa: BLE001 - an exception that does not pickle travels as its text
            data = pickle.dumps(("internal", repr(payload[1])))
        write_all(write_fd, data)
    finally:
        os._exit(0)
