"""Run one command inside an applied plan: apply, run, always destroy, relay the exit status.

``run(plan, roots, argv)`` is what ``mountplan run`` does. The command's exit
status comes back shell style: its own code, or 128+N when signal N killed it;
126 when it cannot be executed and 127 when it does not exist.

``chroot`` names where the command's ``/`` is: an absolute path, or the *name*
of one of the plan's roots (no leading ``/``), which also works for a root given
as an fd. The chroot happens in the child between fork and exec, after the
plan is applied, so the command sees the plan's mounts at ``/proc``, ``/tmp``...

``unshare=True`` does everything in a fresh private mount namespace and a new
pid namespace (plus user, net and ipc namespaces when not root): the mounts are
never visible to the caller, the command sees only its own processes in
``/proc``, anything it leaves running is killed before destroy, and if
mountplan itself dies the namespace and every mount in it die too.

Processes under ``unshare=True``, each armed with PR_SET_PDEATHSIG(SIGKILL)
against its parent, so killing the caller kills the whole chain::

    caller (run)  ──fork──►  helper: unshare  ──fork──►  pid 1: apply, reap, destroy  ──fork──►  command

Signals: the command stays in the caller's process group, so the terminal's
^C reaches it directly. While a child runs, each process reads SIGINT, SIGTERM
and SIGHUP from a signalfd and forwards only those another process sent; the
ones the kernel sent (the terminal's, to the whole group) are not forwarded, so
the command gets each signal once.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import pickle
import select
import signal
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog.stdlib

from mountplan._kernel.fd import Fd
from mountplan._kernel.features import REQUIRED, Availability, detect
from mountplan._kernel.namespaces import (
    SignalInfo,
    die_with_parent,
    enter_private_namespaces,
    is_pipe_open,
    read_signalfd,
    signalfd,
)
from mountplan._log import structured_logger
from mountplan.engine import Engine
from mountplan.engine.executor import root_paths
from mountplan.errors import ExecutionError, KernelError, RootError
from mountplan.model import Plan

__all__ = ["EXIT_CANNOT_EXECUTE", "EXIT_NOT_FOUND", "FORWARDED_SIGNALS", "run"]

_events: structlog.stdlib.BoundLogger = structured_logger(logging.getLogger("mountplan"))

#: Shell conventions (POSIX ``sh``): the command exists but cannot be executed.
EXIT_CANNOT_EXECUTE = 126
#: Shell conventions: the command was not found.
EXIT_NOT_FOUND = 127
#: Signals mountplan catches while the command runs, forwards to it, then destroys.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


_Handler = Callable[[int, types.FrameType | None], Any] | int | signal.Handlers | None


@dataclass(frozen=True, slots=True)
class _Command:
    """What to execute and where, fixed before any fork."""

    argv: tuple[str, ...]
    chroot: str | None
    cwd: str | None
    env: Mapping[str, str] | None


class _Relay:
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
    def installed(self) -> Iterator[_Relay]:
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


def run(
    plan: Plan,
    roots: Mapping[str, str | int] | None,
    argv: Sequence[str],
    *,
    unshare: bool = False,
    chroot: str | None = None,
    cwd: str | None = None,
    state_dir: str | None = None,
    lock_timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> int:
    """Apply ``plan``, run ``argv``, destroy the plan whatever happened; return the exit status.

    ``roots`` maps root names to directories or caller-owned directory fds.
    ``chroot`` is an absolute path, or the name of a plan root, that becomes the
    command's ``/``; ``cwd`` is then a path inside it (default ``/``). ``env``
    replaces the environment (default: inherited); ``PATH`` in it is searched
    inside the chroot.

    SIGINT, SIGTERM and SIGHUP sent to mountplan are forwarded to the command;
    destroy runs once it has exited. A signal that arrives before the command
    starts means it never starts: the result is 128+N after destroy.

    Raises :class:`~mountplan.errors.RootError` for a missing root or chroot
    directory, :class:`~mountplan.errors.ExecutionError` when apply or destroy
    fails or the command cannot be set up (chroot, working directory), and the
    other :class:`~mountplan.errors.MountplanError` types as ``apply`` does.
    A command that does not exist gives 127 and one cannot execute gives 126,
    each with one line on stderr.
    """
    if not argv:
        raise ExecutionError("run: no command given")
    if chroot is not None and not chroot.startswith("/"):
        # Checked before anything is mounted: a typo must not cost an apply.
        names = {r.name for r in plan.roots}
        if chroot not in names:
            raise RootError(
                f"chroot {chroot!r}: not an absolute path and the plan has no root of that name "
                f"(it has {', '.join(sorted(names)) or 'none'})"
            )
    command = _Command(tuple(argv), chroot, cwd, dict(env) if env is not None else None)
    if unshare:
        _carried_fd(roots)  # refuses what cannot work before anything forks
        _require_kernel_for_unshare()
    engine = Engine(state_dir=state_dir, lock_timeout=lock_timeout)
    relay = _Relay()
    with relay.installed():
        if unshare:
            return _run_unshared(plan, roots, command, engine, relay)
        return _run_here(plan, roots, command, engine, relay, pid_one=False)


# --------------------------------------------------------------------------- in this namespace


def _run_here(
    plan: Plan,
    roots: Mapping[str, str | int] | None,
    command: _Command,
    engine: Engine,
    relay: _Relay,
    *,
    pid_one: bool,
) -> int:
    rlog = _events.bind(plan=plan.name, command=command.argv[0])
    # Opened before apply: a missing chroot fails before anything is mounted, and
    # the fd still sees the mounts made beneath it later.
    chroot_fd, owned = _open_chroot(plan, roots, command.chroot)
    try:
        return _apply_run_destroy(plan, roots, command, engine, relay, chroot_fd, rlog, pid_one=pid_one)
    finally:
        if owned:
            os.close(chroot_fd)


def _apply_run_destroy(
    plan: Plan,
    roots: Mapping[str, str | int] | None,
    command: _Command,
    engine: Engine,
    relay: _Relay,
    chroot_fd: int,
    rlog: Any,
    *,
    pid_one: bool,
) -> int:
    with engine.session(plan, roots):
        if relay.received:
            rlog.warning("run.cancelled", signal=signal.Signals(relay.received[0]).name)
            return 128 + relay.received[0]
        # As pid 1 every orphan of the namespace becomes our child: reap on each
        # SIGCHLD while the command runs, or its finished background jobs stay zombies.
        by_sigchld = pid_one or not _has_pidfd()
        with _signals_on_fd(with_sigchld=by_sigchld) as signals:
            pid, failed = _spawn(command, chroot_fd, relay, pid_one=pid_one)
            if failed is not None:
                return failed
            rlog.info("run.started", pid=pid, chroot=command.chroot)
            pidfd = None if by_sigchld else Fd(os.pidfd_open(pid), "pidfd")
            try:
                status, _ = _wait_forwarding(pid, relay, signals, reap_all=pid_one, pidfd=pidfd)
            finally:
                if pidfd is not None:
                    pidfd.close()
        if by_sigchld and not pid_one:
            # We may have swallowed a SIGCHLD the embedding program's handler waits for.
            os.kill(os.getpid(), signal.SIGCHLD)
        relay.pid = None
        if pid_one:
            # As pid 1 of our own pid namespace we can stop whatever the command
            # left behind (a daemonised helper holding a cwd would make destroy EBUSY).
            _kill_remaining()
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        rlog.info("run.exited", status=code, signals=[signal.Signals(s).name for s in relay.received])
        return code


def _open_chroot(plan: Plan, roots: Mapping[str, str | int] | None, chroot: str | None) -> tuple[int, bool]:
    """An fd of the chroot directory (-1 for none) and whether we must close it."""
    if chroot is None:
        return -1, False
    if chroot.startswith("/"):
        where: str | int | None = chroot
    else:
        where = root_paths(plan, roots).get(chroot)
        if where is None:
            raise RootError(f"chroot {chroot!r}: the root was not given (use --root {chroot}=DIR)")
    if isinstance(where, int):
        return where, False
    assert where is not None
    try:
        return os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), True
    except OSError as exc:
        raise RootError(f"chroot {chroot!r}: cannot open {where!r}: {exc.strerror}") from exc


def _spawn(command: _Command, chroot_fd: int, relay: _Relay, *, pid_one: bool) -> tuple[int, int | None]:
    """Fork and exec the command: its pid, and 126/127 when exec failed (already reaped).

    Raises ExecutionError when the chroot or working directory failed. Call it
    inside :func:`_signals_on_fd`: the forwarded signals stay blocked across the
    fork, so none lands in the child while it still runs our Python handler; the
    child unblocks them after resetting the dispositions.

    A child that fails before exec reports ``stage errno`` through a close-on-exec
    pipe, so the parent learns exactly what failed; a clean exec closes the pipe.
    """
    read_fd, write_fd = os.pipe()
    dispositions = {int(s): relay.original(s) for s in FORWARDED_SIGNALS}
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns to Python code paths we measure
        os.close(read_fd)
        _exec_child(command, chroot_fd, write_fd, dispositions, relay.mask, pid_one=pid_one)
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
        # fd 2, not sys.stderr: the line belongs where the command's own errors would go.
        with contextlib.suppress(OSError):
            _write_all(2, f"mountplan: {name}: {problem}\n".encode())
        return pid, code
    where = command.chroot if stage == "chroot" else (command.cwd or "/")
    raise ExecutionError(
        f"run {name!r}: cannot {stage} to {where!r}: {errno.errorcode.get(err, err)} ({reason})"
    )


def _exec_child(
    command: _Command,
    chroot_fd: int,
    write_fd: int,
    dispositions: Mapping[int, _Handler],
    mask: Any,
    *,
    pid_one: bool,
) -> None:
    stage = "setup"
    try:
        if pid_one:
            # The namespace dies with its pid 1 anyway; this also covers the
            # moment before exec. Our parent is pid 1 of the namespace.
            die_with_parent(lambda: os.getppid() == 1)
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
        stage = "exec"
        _execvpe(command.argv, command.env if command.env is not None else os.environ)
    except OSError as exc:
        _write_all(write_fd, f"{stage} {exc.errno or errno.EIO}".encode())
    except BaseException:  # noqa: BLE001 - the child must reach _exit whatever happened
        _write_all(write_fd, f"{stage} {errno.EIO}".encode())
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@functools.cache
def _has_pidfd() -> bool:
    """pidfd_open(2) works here (Linux 5.3)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


@contextlib.contextmanager
def _signals_on_fd(*, with_sigchld: bool = False) -> Iterator[Fd]:
    """Block the forwarded signals (and SIGCHLD) in this thread and read them from a signalfd.

    A Python handler cannot see ``si_code``, which is what tells the terminal's
    ^C (already delivered to the whole process group) from a kill(2) that must be
    forwarded. Children forked inside inherit the block: each restores the
    caller's mask (:attr:`_Relay.mask`). On the way out the old mask comes back;
    a signal still pending then goes to the Python handler.
    """
    wanted = [*FORWARDED_SIGNALS, *([signal.SIGCHLD] if with_sigchld else [])]
    old = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        with signalfd(wanted) as fd:
            yield fd
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _wait_forwarding(
    pid: int,
    relay: _Relay,
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


def _kill_remaining() -> None:
    """Kill every other process in our pid namespace and reap it (we are its pid 1)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


# --------------------------------------------------------------------------- unshared


def _run_unshared(
    plan: Plan, roots: Mapping[str, str | int] | None, command: _Command, engine: Engine, relay: _Relay
) -> int:
    """Fork a helper that enters fresh namespaces and runs everything as pid 1 there.

    The helper's report (the status, or the exception) comes back through a pipe;
    when it dies without one, its namespaces took every mount with them.
    """
    parent = os.getpid()
    read_fd, write_fd = os.pipe()
    with _signals_on_fd() as signals:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked helper
            os.close(read_fd)
            signals.close()
            _unshared_helper(plan, roots, command, engine, relay, write_fd, parent)
        relay.pid = pid
        relay.attach(pid)
        os.close(write_fd)
        try:
            status, data = _wait_forwarding(pid, relay, signals, report_fd=read_fd)
        except BaseException:
            # Never leave the helper behind (it dies with this thread, not with this call).
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        finally:
            os.close(read_fd)
            relay.pid = None
    if not data:
        raise ExecutionError(
            f"run {command.argv[0]!r}: the namespace helper died without a report (wait status {status:#x}); "
            "its mounts died with its namespace, `mountplan recover` tidies the state it left"
        )
    kind, value, text = pickle.loads(data)
    if kind == "ok":
        return int(value)
    if isinstance(value, BaseException):
        raise value
    raise ExecutionError(f"run {command.argv[0]!r} failed in its namespace:\n{text}")


def _unshared_helper(
    plan: Plan,
    roots: Mapping[str, str | int] | None,
    command: _Command,
    engine: Engine,
    relay: _Relay,
    write_fd: int,
    parent: int,
) -> None:
    code = 1
    try:
        die_with_parent(lambda: os.getppid() == parent)
        relay.pid = None
        relay.received.clear()  # what reached the caller reaches us by its kill(2)
        carry = _carried_fd(roots)
        carried = _enter_namespaces(carry[1] if carry else None)
        # A new user namespace changed our credentials: re-arm, and probe again
        # (the caller's probe saw no CAP_SYS_ADMIN; here we have it).
        die_with_parent(lambda: os.getppid() == parent)
        detect.cache_clear()
        if carry is not None and carried is not None:
            roots = {**(roots or {}), **dict.fromkeys(carry[0], carried.fileno())}
        with _signals_on_fd(with_sigchld=True) as signals:
            # pid 1 of the new namespace reads getppid() == 0 whoever its parent is:
            # it learns of our death from a pipe only we hold.
            alive_read, alive_write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pid 1 of the new pid namespace
                os.close(alive_write)
                die_with_parent(lambda: is_pipe_open(alive_read))
                os.close(alive_read)
                signals.close()
                relay.received.clear()
                signal.pthread_sigmask(signal.SIG_SETMASK, relay.mask)
                _report(write_fd, lambda: _run_here(plan, roots, command, engine, relay, pid_one=True))
            os.close(alive_read)
            relay.pid = pid
            relay.attach(pid)
            status, _ = _wait_forwarding(pid, relay, signals)
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
    except BaseException:  # noqa: BLE001 - relayed to the caller
        _send(write_fd, ("error", None, traceback.format_exc()))
    finally:
        os._exit(code & 0xFF)


def _report(write_fd: int, func: Callable[[], int]) -> None:
    try:
        try:
            _send(write_fd, ("ok", func(), ""))
        except BaseException as exc:  # noqa: BLE001 - relayed to the caller
            _send(write_fd, ("error", exc, traceback.format_exc()))
    finally:
        os._exit(0)


def _send(fd: int, payload: tuple[str, Any, str]) -> None:
    try:
        data = pickle.dumps(payload)
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as its text
        data = pickle.dumps(("error", None, f"{payload[1]!r}\n{payload[2]}"))
    _write_all(fd, data)


def _enter_namespaces(carry_fd: int | None) -> Fd | None:
    """Fresh mount + pid namespaces; as root without the capability, via a user namespace.

    Returns ``carry_fd``'s directory as seen in the new mount namespace.
    """
    if os.geteuid() == 0:
        try:
            return enter_private_namespaces(as_root=True, carry_fd=carry_fd)
        except KernelError as exc:
            if exc.errno != errno.EPERM:
                raise
    return enter_private_namespaces(as_root=False, carry_fd=carry_fd)


def _carried_fd(roots: Mapping[str, str | int] | None) -> tuple[tuple[str, ...], int] | None:
    """The roots given as an fd (their names and the fd) that must be carried into the new namespace.

    An fd names a mount of the caller's namespace, useless as a mount target in
    another one. unshare(2) carries the working directory onto the new copy of
    its mount, and that is one directory only: a second fd root is refused
    rather than found again by its path.
    """
    fds: dict[int, list[str]] = {}
    for name, where in (roots or {}).items():
        if isinstance(where, int):
            fds.setdefault(where, []).append(name)
    if not fds:
        return None
    if len(fds) > 1:
        names = ", ".join(sorted(n for group in fds.values() for n in group))
        raise RootError(
            f"roots {names}: --unshare can carry one directory fd into the new mount namespace, "
            f"not {len(fds)}; give the others as paths"
        )
    ((fd, names_of_fd),) = fds.items()
    return tuple(names_of_fd), fd


def _require_kernel_for_unshare() -> None:
    """Refuse before unsharing when the kernel (or a seccomp filter) lacks a syscall apply needs.

    The caller's probe may see no CAP_SYS_ADMIN (fsopen's EPERM); the new user
    namespace grants it, so only that cause is not a reason to refuse.
    """
    features = detect()
    names = [n for n in REQUIRED if features.availability(n) is not Availability.NO_CAPABILITY]
    if names:
        features.require(*names)
