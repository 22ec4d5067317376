"""The command's process under ``run``: fork, exec, forward signals, wait, reap.

:func:`spawn` forks the command (chroot, working directory, signal dispositions
and mask restored in the child) and learns through a close-on-exec pipe exactly
what failed before exec. :class:`Relay` forwards SIGINT, SIGTERM and SIGHUP to
the current child; :func:`signals_on_fd` and :func:`wait_forwarding` read them
from a signalfd while waiting, which is what tells the terminal's ^C (already
delivered to the whole process group) from a kill(2) that must be forwarded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import select
import signal
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mountplan._kernel.fd import Fd
from mountplan._kernel.namespaces import SignalInfo, die_with_parent, read_signalfd, signalfd
from mountplan.errors import ExecutionError

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_NOT_FOUND",
    "FORWARDED_SIGNALS",
    "Command",
    "Relay",
    "has_pidfd",
    "kill_remaining",
    "signals_on_fd",
    "spawn",
    "wait_forwarding",
    "write_all",
]

#: Shell conventions (POSIX ``sh``): the command exists but cannot be executed.
EXIT_CANNOT_EXECUTE = 126
#: Shell conventions: the command was not found.
EXIT_NOT_FOUND = 127
#: Signals mountplan catches while the command runs, forwards to it, then destroys.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


_Handler = Callable[[int, types.FrameType | None], Any] | int | signal.Handlers | None


@dataclass(frozen=True, slots=True)
class Command:
    """What to execute and where, fixed before any fork."""

    argv: tuple[str, ...]
    chroot: str | None
    cwd: str | None
    env: Mapping[str, str] | None
    #: The command's stdin, stdout and stderr (fds dup'ed onto 0, 1, 2 just before exec); None: ours.
    stdio: tuple[int, int, int] | None = None


class Relay:
    """Signal handlers that forward to the current child and remember what arrived.

    The handler never raises: a signal must not interrupt apply or destroy halfway,
    it only decides that the command stops (or never starts) and destroy runs.
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self.received: list[int] = []
        self._saved: dict[int, _Handler] = {}
        #: The caller's signal mask: every child gets it back before it goes on.
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        self.received.append(signum)
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def forward(self, info: SignalInfo) -> None:
        """Pass a signal read from the signalfd on to the child, unless it already has its own copy.

        The terminal (and the kernel on a controlling process's exit) signals the
        whole foreground process group, which holds the child too: forwarding
        that one as well made the command see every ^C twice. The exception is
        the hangup the kernel sends to a session leader alone.
        """
        self.received.append(info.signo)
        if info.is_from_kernel and not (info.signo == signal.SIGHUP and os.getsid(0) == os.getpid()):
            return
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, info.signo)

    def attach(self, pid: int) -> None:
        """Forward to ``pid`` from now on, including anything that arrived before it existed.

        Call it right after the fork, with the forwarded signals blocked. What is
        pending then was sent before the child existed, so the child has no copy
        even of a terminal's signal: forward it whatever its origin. (Only a
        signal sent in the instant between fork and this call can arrive twice.)
        """
        self.pid = pid
        for signum in self.received:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        while (info := signal.sigtimedwait(FORWARDED_SIGNALS, 0)) is not None:
            self.received.append(info.si_signo)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, info.si_signo)

    def original(self, signum: int) -> _Handler:
        """The disposition the caller had before ``installed``."""
        return self._saved.get(signum, signal.SIG_DFL)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Relay]:
        # signal.signal only works in the main thread; an embedding worker thread
        # keeps its process's handlers and gets no forwarding.
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in FORWARDED_SIGNALS:
            self._saved[int(sig)] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._saved.items():
                signal.signal(signum, handler)
            self._saved.clear()


def spawn(command: Command, chroot_fd: int, relay: Relay, *, pid_one: bool) -> tuple[int, int | None]:
    """Fork and exec the command: its pid, and 126/127 when exec failed (already reaped).

    Raises ExecutionError when the chroot or working directory failed. Call it
    inside :func:`signals_on_fd`: the forwarded signals stay blocked across the
    fork, so none lands in the child while it still runs our Python handler; the
    child unblocks them after resetting the dispositions.

    A child that fails before exec reports ``stage errno`` through a close-on-exec
    pipe, so the parent learns exactly what failed; a clean exec closes the pipe.
    """
    read_fd, write_fd = os.pipe()
    dispositions = {int(s): relay.original(s) for s in FORWARDED_SIGNALS}
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns to Python code paths we measure
        os.close(read_fd)
        _exec_child(command, chroot_fd, write_fd, dispositions, relay.mask, parent=1 if pid_one else parent)
    relay.pid = pid
    relay.attach(pid)
    os.close(write_fd)
    try:
        report = b""
        while chunk := os.read(read_fd, 512):
            report += chunk
    finally:
        os.close(read_fd)
    if not report:
        return pid, None
    os.waitpid(pid, 0)
    relay.pid = None
    stage, _, number = report.decode().partition(" ")
    err = int(number or errno.EIO)
    reason = os.strerror(err)
    name = command.argv[0]
    if stage == "exec":
        code = EXIT_NOT_FOUND if err in {errno.ENOENT, errno.ENOTDIR} else EXIT_CANNOT_EXECUTE
        problem = "command not found" if code == EXIT_NOT_FOUND else f"cannot execute: {reason}"
        # The command's fd 2, not sys.stderr: the line belongs where its own errors would go.
        with contextlib.suppress(OSError):
            write_all(command.stdio[2] if command.stdio else 2, f"mountplan: {name}: {problem}\n".encode())
        return pid, code
    if stage == "stdio":
        raise ExecutionError(
            f"run {name!r}: cannot give it its stdin/stdout/stderr: {errno.errorcode.get(err, err)} ({reason})"
        )
    where = command.chroot if stage == "chroot" else (command.cwd or "/")
    raise ExecutionError(
        f"run {name!r}: cannot {stage} to {where!r}: {errno.errorcode.get(err, err)} ({reason})"
    )


def _exec_child(
    command: Command,
    chroot_fd: int,
    write_fd: int,
    dispositions: Mapping[int, _Handler],
    mask: Any,
    *,
    parent: int,
) -> None:
    stage = "setup"
    try:
        # Never outlive the process that destroys after us: killed, it can no longer
        # stop us, and what we hold would keep the mounts busy. (Under --unshare the
        # parent is pid 1 of the namespace, whose death ends it anyway; this also
        # covers the moment before exec.)
        die_with_parent(lambda: os.getppid() == parent)
        for signum, handler in dispositions.items():
            signal.signal(signum, signal.SIG_IGN if handler == signal.SIG_IGN else signal.SIG_DFL)
        # Python ignores SIGPIPE and SIGXFSZ itself; the command must get the defaults.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if chroot_fd >= 0:
            stage = "chroot"
            os.fchdir(chroot_fd)
            os.chroot(".")
        if chroot_fd >= 0 or command.cwd is not None:
            stage = "chdir"
            os.chdir(command.cwd or "/")
        if command.stdio is not None:
            stage = "stdio"
            # Above 2 first, so that (1, 0, 2) does not overwrite 0 before reading it.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in command.stdio]
            for target, fd in enumerate(high):
                os.dup2(fd, target)  # the copy on 0-2 is not close-on-exec
        stage = "exec"
        _execvpe(command.argv, command.env if command.env is not None else os.environ)
    except OSError as exc:
        write_all(write_fd, f"{stage} {exc.errno or errno.EIO}".encode())
    except BaseException:  # noqa: BLE001 - the child must reach _exit whatever happened
        write_all(write_fd, f"{stage} {errno.EIO}".encode())
    os._exit(EXIT_NOT_FOUND)


def _execvpe(argv: tuple[str, ...], env: Mapping[str, str]) -> None:
    """execvp as a shell does it: an unsearchable PATH entry means "not there", not EACCES.

    os.execvpe reports the first EACCES it meets, so a PATH entry such as an
    unreadable /root/bin would turn "command not found" (127) into 126.
    """
    name = argv[0]
    if "/" in name:
        os.execve(name, argv, env)
    first: OSError | None = None
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        try:
            os.execve(candidate, argv, env)
        except OSError as exc:
            if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
                continue
            if exc.errno == errno.EACCES and not os.path.lexists(candidate):
                continue
            first = first or exc
    raise first or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@functools.cache
def has_pidfd() -> bool:
    """pidfd_open(2) works here (Linux 5.3)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


@contextlib.contextmanager
def signals_on_fd(*, with_sigchld: bool = False) -> Iterator[Fd]:
    """Block the forwarded signals (and SIGCHLD) in this thread and read them from a signalfd.

    A Python handler cannot see ``si_code``, which is what tells the terminal's
    ^C (already delivered to the whole process group) from a kill(2) that must be
    forwarded. Children forked inside inherit the block: each restores the
    caller's mask (:attr:`Relay.mask`). On the way out the old mask comes back;
    a signal still pending then goes to the Python handler.
    """
    wanted = [*FORWARDED_SIGNALS, *([signal.SIGCHLD] if with_sigchld else [])]
    old = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        with signalfd(wanted) as fd:
            yield fd
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def wait_forwarding(
    pid: int,
    relay: Relay,
    signals: Fd,
    *,
    reap_all: bool = False,
    pidfd: Fd | None = None,
    report_fd: int = -1,
) -> tuple[int, bytes]:
    """Wait for child ``pid``, forwarding signals to it: its wait status, and what came on ``report_fd``.

    The child's exit is learnt from ``pidfd``, else from the end of ``report_fd``
    (read until every writer closed it, so a report larger than a pipe cannot
    block its writer), else from SIGCHLD on ``signals``. ``reap_all`` (pid 1)
    reaps every child on each SIGCHLD, not only ``pid``.
    """
    status: int | None = None
    report = bytearray()
    poller = select.poll()
    poller.register(signals.fileno(), select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd.fileno(), select.POLLIN)
    reading = report_fd >= 0
    if reading:
        poller.register(report_fd, select.POLLIN)
    while status is None or reading:
        if status is None and report_fd >= 0 and not reading:
            _, status = os.waitpid(pid, 0)  # every writer is gone: it has exited or is exiting
            break
        for fd, _ in poller.poll():
            if fd == report_fd:
                chunk = os.read(report_fd, 1 << 16)
                report += chunk
                if not chunk:
                    reading = False
                    poller.unregister(report_fd)
            elif pidfd is not None and fd == pidfd.fileno():
                _, status = os.waitpid(pid, 0)
                poller.unregister(fd)
            else:
                for info in read_signalfd(fd):
                    if info.signo == signal.SIGCHLD:
                        status = _reap(pid, reap_all, status)
                    else:
                        relay.forward(info)
    return status, bytes(report)


def _reap(pid: int, reap_all: bool, status: int | None) -> int | None:
    """Reap what has exited (every child with ``reap_all``): ``pid``'s wait status once it is among them."""
    while True:
        try:
            child, child_status = os.waitpid(-1 if reap_all else pid, os.WNOHANG)
        except ChildProcessError:
            return status
        if child == 0:
            return status
        if child == pid:
            status = child_status
            if not reap_all:
                return status


def kill_remaining() -> None:
    """Kill every other process in our pid namespace and reap it (we are its pid 1)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
