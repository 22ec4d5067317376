"""Test helpers: run code inside throwaway namespaces so no mount reaches the host.

``run_in_sandbox(func, *args)`` forks; the child enters fresh namespaces (mount
and pid always; user, net and ipc too when unprivileged, because the kernel only
lets a user namespace's owner mount proc, sysfs and mqueue for namespaces it
owns; cgroup whenever the kernel allows, because a cgroup2 mount made from the
initial cgroup namespace rewrites the machine-wide cgroup2 flags), makes every
mount private so nothing propagates out, and forks once more so the function
runs as pid 1 of the new pid namespace. Both children die with their parent
(PR_SET_PDEATHSIG), so a killed caller leaves no namespace behind. Whatever the
function does, its mounts die with the namespace. Exceptions (including
pytest's skip and assertion failures) come back to the caller.

``read_mount_records()`` and ``describe_mount_table_changes()`` compare two
mount tables by what a test can change (mount point, fs type, source, mount and
super options, propagation), not by the 32-bit ids the kernel reuses.

Embedding projects can use this to test their own plans the same way.
"""

from __future__ import annotations

import collections
import os
import pickle
import select
import signal
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from mountplan._kernel.namespaces import (
    enter_cgroup_namespace,
    enter_private_namespaces,
    prctl_set_pdeathsig,
)
from mountplan.errors import KernelError

__all__ = [
    "CgroupNamespaceUnavailable",
    "MountRecord",
    "SandboxError",
    "describe_mount_table_changes",
    "is_privileged",
    "mount_table_snapshot",
    "parse_mount_records",
    "read_mount_records",
    "run_in_sandbox",
]

T = TypeVar("T")


class SandboxError(RuntimeError):
    """The sandbox could not be set up, or its child died without reporting."""


class CgroupNamespaceUnavailable(SandboxError):
    """A new cgroup namespace was required but the kernel refused to make one."""


def is_privileged() -> bool:
    """True when we are root in the initial user namespace."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            first = f.readline().split()
        return first[:3] == ["0", "0", "4294967295"]
    except OSError:
        return True


def mount_table_snapshot() -> list[str]:
    """The calling process's mount table as sorted mountinfo lines."""
    with open("/proc/self/mountinfo") as f:
        return sorted(f.read().splitlines())


@dataclass(frozen=True, slots=True, order=True)
class MountRecord:
    """One mountinfo line without its ids: what the host guard compares.

    Mount ids and device numbers are left out: they say which mount it is, not
    what it is, and the kernel reuses 32-bit ids at once. Paths and the source
    keep mountinfo's octal escapes (compared, never interpreted).
    """

    mount_point: str
    root: str
    fs_type: str
    source: str
    mount_options: tuple[str, ...]
    super_options: tuple[str, ...]
    propagation: tuple[str, ...]

    def render(self) -> str:
        """The record as one line, fields in mountinfo's order."""
        fields = [
            self.mount_point,
            self.root,
            self.fs_type,
            self.source,
            ",".join(self.mount_options),
            ",".join(self.super_options),
            " ".join(self.propagation) or "private",
        ]
        return " ".join(fields)


def parse_mount_records(text: str) -> list[MountRecord]:
    """Parse /proc/PID/mountinfo text into sorted records (see proc_pid_mountinfo(5))."""
    records: list[MountRecord] = []
    for line in text.splitlines():
        fields = line.split(" ")
        # Spaces inside fields are escaped as \040, so " - " only ever separates.
        dash = fields.index("-", 6)
        root, mount_point, mount_options = fields[3], fields[4], fields[5]
        fs_type, source, super_options = (fields[dash + 1 : dash + 4] + ["", ""])[:3]
        records.append(
            MountRecord(
                mount_point=mount_point,
                root=root,
                fs_type=fs_type,
                source=source,
                mount_options=tuple(mount_options.split(",")),
                super_options=tuple(super_options.split(",")) if super_options else (),
                propagation=tuple(sorted(fields[6:dash])),
            )
        )
    return sorted(records)


def read_mount_records(path: str = "/proc/self/mountinfo") -> list[MountRecord]:
    """The calling process's mount table as sorted :class:`MountRecord` values."""
    with open(path) as f:
        return parse_mount_records(f.read())


def _option_changes(before: Iterable[str], after: Iterable[str]) -> str:
    old, new = list(before), list(after)
    added = [f"+{option}" for option in new if option not in old]
    removed = [f"-{option}" for option in old if option not in new]
    return " ".join(added + removed) or "reordered"


def describe_mount_table_changes(before: Iterable[MountRecord], after: Iterable[MountRecord]) -> list[str]:
    """Every difference between two mount tables, one line each; empty when equal.

    ``+``/``-`` lines are mounts that appeared or went away; ``~`` lines are a mount
    (same mount point, root, type and source) whose options or propagation
    changed. A change to cgroup2's super options gets one more line naming the
    flags, because those are not a mount's own: they are the machine-wide flags of
    the one cgroup2 hierarchy, rewritten by any cgroup2 mount or remount made from
    the initial cgroup namespace.
    """
    old, new = collections.Counter(before), collections.Counter(after)
    removed, added = sorted((old - new).elements()), sorted((new - old).elements())
    lines: list[str] = []
    cgroup2_flags: set[str] = set()
    unmatched_added = list(added)
    for gone in removed:
        key = (gone.mount_point, gone.root, gone.fs_type, gone.source)
        match = next(
            (m for m in unmatched_added if (m.mount_point, m.root, m.fs_type, m.source) == key), None
        )
        if match is None:
            lines.append(f"- {gone.render()}")
            continue
        unmatched_added.remove(match)
        what = []
        if gone.mount_options != match.mount_options:
            what.append(f"mount options {_option_changes(gone.mount_options, match.mount_options)}")
        if gone.super_options != match.super_options:
            what.append(f"super options {_option_changes(gone.super_options, match.super_options)}")
            if gone.fs_type == "cgroup2":
                cgroup2_flags.add(_option_changes(gone.super_options, match.super_options))
        if gone.propagation != match.propagation:
            what.append(
                f"propagation {' '.join(gone.propagation) or 'private'} -> {' '.join(match.propagation) or 'private'}"
            )
        lines.append(f"~ {match.mount_point} ({match.fs_type}): {'; '.join(what)}")
    lines.extend(f"+ {record.render()}" for record in unmatched_added)
    lines.extend(
        f"! cgroup2 flags changed machine-wide ({flags}): a cgroup2 mount or remount was made "
        "from the initial cgroup namespace"
        for flags in sorted(cgroup2_flags)
    )
    return lines


def enter_namespaces() -> str | None:
    """Enter fresh namespaces in this process (pid takes effect for children).

    A new cgroup namespace is entered too whenever the kernel allows it; the
    result is None then, else why it could not be made (the other namespaces
    are entered either way).
    """
    enter_private_namespaces(as_root=is_privileged())
    try:
        enter_cgroup_namespace()
    except KernelError as exc:
        return str(exc)
    return None


def _die_with_parent(is_parent_alive: Callable[[], bool]) -> None:
    """Get SIGKILL when the parent dies; exit now if it already has.

    Without this a killed pytest leaves its sandbox running, and with it a mount
    namespace full of mounts. The check after prctl closes the window in which
    the parent died before the signal was armed.
    """
    prctl_set_pdeathsig(signal.SIGKILL)
    if not is_parent_alive():
        os._exit(1)


def _is_open(read_fd: int) -> bool:
    """Whether the write end of this pipe still has a holder (no EOF pending)."""
    ready, _, _ = select.select([read_fd], [], [], 0)
    return not ready


def _send(fd: int, payload: object) -> None:
    try:
        data = pickle.dumps(payload)
    except Exception:  # noqa: BLE001 - unpicklable result or exception: send its text instead
        data = pickle.dumps(("error", None, repr(payload)))
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _child(
    parent: int,
    write_fd: int,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    require_cgroupns: bool,
) -> None:
    code = 0
    try:
        _die_with_parent(lambda: os.getppid() == parent)
        no_cgroupns = enter_namespaces()
        if require_cgroupns and no_cgroupns is not None:
            _send(write_fd, ("no-cgroupns", None, no_cgroupns))
            return
        # pid 1 of the new pid namespace sees getppid() == 0 whoever its parent is,
        # so it learns of this process's death from a pipe only this process holds.
        alive_read, alive_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pid 1 of the new pid namespace
            try:
                os.close(alive_write)
                _die_with_parent(lambda: _is_open(alive_read))
                os.close(alive_read)
                result = func(*args, **kwargs)
                _send(write_fd, ("ok", result, ""))
            except BaseException as exc:  # noqa: BLE001 - relayed to the parent
                tb = traceback.format_exc()
                try:
                    pickle.dumps(exc)
                    _send(write_fd, ("error", exc, tb))
                except Exception:  # noqa: BLE001 - an unpicklable exception travels as text
                    _send(write_fd, ("error", None, tb))
            finally:
                os._exit(0)
        os.close(alive_read)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    except BaseException:  # noqa: BLE001 - whatever broke the sandbox is reported to the parent
        _send(write_fd, ("error", None, traceback.format_exc()))
        code = 1
    finally:
        os._exit(code & 0xFF)


def run_in_sandbox(
    func: Callable[..., T],
    *args: Any,
    timeout: float = 600.0,
    require_cgroupns: bool = False,
    **kwargs: Any,
) -> T:
    """Run ``func(*args, **kwargs)`` in fresh namespaces and return its result.

    The function's exception is re-raised here with the child's traceback
    appended to its message, so a failing assertion reads naturally. With
    ``require_cgroupns`` the function runs only in a new cgroup namespace (needed
    for any cgroup2 mount); :class:`CgroupNamespaceUnavailable` says why there is
    none. The sandbox dies with the calling *thread* (PR_SET_PDEATHSIG follows
    the thread that forked).
    """
    parent = os.getpid()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(parent, write_fd, func, args, kwargs, require_cgroupns)
    os.close(write_fd)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise SandboxError(f"sandboxed {getattr(func, '__name__', func)} timed out after {timeout}s")
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    if not chunks:
        raise SandboxError(f"sandbox child died without a report (status {status:#x})")
    kind, value, tb = pickle.loads(b"".join(chunks))
    if kind == "ok":
        return value  # type: ignore[no-any-return]
    if kind == "no-cgroupns":
        raise CgroupNamespaceUnavailable(f"cannot make a new cgroup namespace: {tb}")
    if isinstance(value, BaseException):
        if isinstance(value, AssertionError):
            raise AssertionError(f"{value}\n--- traceback inside the sandbox ---\n{tb}") from None  # noqa: TRY004 - re-raised with the child traceback
        if type(value).__module__.startswith(("_pytest", "pytest")):
            raise value  # skip / xfail / fail outcomes pass through unchanged
        raise value from SandboxError(f"raised inside the sandbox:\n{tb}")
    raise SandboxError(f"inside the sandbox:\n{tb}")
