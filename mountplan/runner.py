"""Run one command inside an applied plan: apply, run, always destroy, relay the exit status.

``run(plan, roots, argv)`` is what ``mountplan run`` does. The command's exit
status comes back shell style: its own code, or 128+N when signal N killed it;
126 when it cannot be executed and 127 when it does not exist.

``chroot`` names where the command's ``/`` is: an absolute path, or the *name*
of one of the plan's roots (no leading ``/``), which also works for a root given
as an fd. The chroot happens in the child between fork and exec, after the
plan is applied, so the command sees the plan's mounts at ``/proc``, ``/tmp``...

``unshare`` does everything in a fresh private mount namespace and a new pid
namespace: the mounts are never visible to the caller, the command sees only
its own processes in ``/proc``, anything it leaves running is killed before
destroy, and if mountplan itself dies the namespace and every mount in it die
too. ``unshare=True`` (a build action's sandbox) also gives the command new
net, ipc, uts and cgroup namespaces; a set of :class:`Namespace` values names
exactly which of those it gets. Without root a user namespace that maps the
caller to root comes first, always.

Processes under ``unshare``, each armed with PR_SET_PDEATHSIG(SIGKILL)
against its parent, so killing the caller kills the whole chain::

    caller (run)  ──fork──►  helper: unshare  ──fork──►  pid 1: apply, reap, destroy  ──fork──►  command

Signals: the command stays in the caller's process group, so the terminal's
^C reaches it directly. While a child runs, each process reads SIGINT, SIGTERM
and SIGHUP from a signalfd and forwards only those another process sent; the
ones the kernel sent (the terminal's, to the whole group) are not forwarded, so
the command gets each signal once (:mod:`mountplan._command`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from mountplan._command import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    FORWARDED_SIGNALS,
    Command,
    Relay,
    has_pidfd,
    kill_remaining,
    signals_on_fd,
    spawn,
    wait_forwarding,
    write_all,
)
from mountplan._kernel.fd import Fd
from mountplan._kernel.features import detect
from mountplan._kernel.namespaces import die_with_parent, is_pipe_open
from mountplan._log import EventLogger, structured_logger
from mountplan._unshare import (
    ALL_NAMESPACES,
    Namespace,
    carried_fd,
    enter_namespaces,
    namespaces_for,
    require_kernel_for_unshare,
)
from mountplan.engine import Engine
from mountplan.engine.executor import root_paths
from mountplan.errors import ExecutionError, RootError
from mountplan.model import Plan

__all__ = ["ALL_NAMESPACES", "EXIT_CANNOT_EXECUTE", "EXIT_NOT_FOUND", "FORWARDED_SIGNALS", "Namespace", "run"]

_events: EventLogger = structured_logger(logging.getLogger("mountplan"))


def run(
    plan: Plan,
    roots: Mapping[str, str | int] | None,
    argv: Sequence[str],
    *,
    unshare: bool | Collection[Namespace | str] = False,
    chroot: str | None = None,
    cwd: str | None = None,
    state_dir: str | None = None,
    lock_timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    stdio: tuple[int, int, int] | None = None,
) -> int:
    """Apply ``plan``, run ``argv``, destroy the plan whatever happened; return the exit status.

    ``roots`` maps root names to directories or caller-owned directory fds.
    ``chroot`` is an absolute path, or the name of a plan root, that becomes the
    command's ``/``; ``cwd`` is then a path inside it (default ``/``). ``env``
    replaces the environment (default: inherited); ``PATH`` in it is searched
    inside the chroot. ``stdio`` gives the command other fds as its stdin, stdout
    and stderr (default: this process's); mountplan's own messages stay on ours.

    ``unshare`` runs everything in new mount and pid namespaces: ``True`` adds
    net, ipc, uts and cgroup namespaces (:data:`ALL_NAMESPACES`), a collection
    of :class:`Namespace` values (or their names) adds exactly those, ``[]``
    none; without root a user namespace always comes first.

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
    command = Command(tuple(argv), chroot, cwd, dict(env) if env is not None else None, stdio)
    namespaces = namespaces_for(unshare)
    if namespaces is not None:
        carried_fd(roots)  # refuses what cannot work before anything forks
        require_kernel_for_unshare()
    engine = Engine(state_dir=state_dir, lock_timeout=lock_timeout)
    relay = Relay()
    with relay.installed():
        if namespaces is not None:
            return _run_unshared(plan, roots, command, engine, relay, namespaces)
        return _run_here(plan, roots, command, engine, relay, pid_one=False)


# --------------------------------------------------------------------------- in this namespace


def _run_here(
    plan: Plan,
    roots: Mapping[str, str | int] | None,
    command: Command,
    engine: Engine,
    relay: Relay,
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
    command: Command,
    engine: Engine,
    relay: Relay,
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
        by_sigchld = pid_one or not has_pidfd()
        with signals_on_fd(with_sigchld=by_sigchld) as signals:
            pid, failed = spawn(command, chroot_fd, relay, pid_one=pid_one)
            if failed is not None:
                return failed
            rlog.info("run.started", pid=pid, chroot=command.chroot)
            pidfd = None if by_sigchld else Fd(os.pidfd_open(pid), "pidfd")
            try:
                status, _ = wait_forwarding(pid, relay, signals, reap_all=pid_one, pidfd=pidfd)
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
            kill_remaining()
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


# --------------------------------------------------------------------------- unshared


def _run_unshared(
    plan: Plan,
    roots: Mapping[str, str | int] | None,
    command: Command,
    engine: Engine,
    relay: Relay,
    namespaces: frozenset[Namespace],
) -> int:
    """Fork a helper that enters fresh namespaces and runs everything as pid 1 there.

    The helper's report (the status, or the exception) comes back through a pipe;
    when it dies without one, its namespaces took every mount with them.
    """
    parent = os.getpid()
    read_fd, write_fd = os.pipe()
    with signals_on_fd() as signals:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked helper
            os.close(read_fd)
            signals.close()
            _unshared_helper(plan, roots, command, engine, relay, namespaces, write_fd, parent)
        relay.pid = pid
        relay.attach(pid)
        os.close(write_fd)
        try:
            status, data = wait_forwarding(pid, relay, signals, report_fd=read_fd)
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
            "its mounts died with its namespace, what it created in the roots stays (see docs/embedding.md)"
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
    command: Command,
    engine: Engine,
    relay: Relay,
    namespaces: frozenset[Namespace],
    write_fd: int,
    parent: int,
) -> None:
    code = 1
    try:
        die_with_parent(lambda: os.getppid() == parent)
        relay.pid = None
        relay.received.clear()  # what reached the caller reaches us by its kill(2)
        carry = carried_fd(roots)
        carried = enter_namespaces(carry[1] if carry else None, namespaces)
        # A new user namespace changed our credentials: re-arm, and probe again
        # (the caller's probe saw no CAP_SYS_ADMIN; here we have it).
        die_with_parent(lambda: os.getppid() == parent)
        detect.cache_clear()
        if carry is not None and carried is not None:
            roots = {**(roots or {}), **dict.fromkeys(carry[0], carried.fileno())}
        with signals_on_fd(with_sigchld=True) as signals:
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
            status, _ = wait_forwarding(pid, relay, signals)
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
    write_all(fd, data)
