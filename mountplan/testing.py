"""Test helpers: run code inside throwaway namespaces so no mount reaches the host.

``run_in_sandbox(func, *args)`` forks; the child enters fresh namespaces (mount
and pid always; user, net and ipc too when unprivileged, because the kernel only
lets a user namespace's owner mount proc, sysfs and mqueue for namespaces it
owns), makes every mount private so nothing propagates out, and forks once more
so the function runs as pid 1 of the new pid namespace. Whatever the function
does, its mounts die with the namespace. Exceptions (including pytest's skip and
assertion failures) come back to the caller.

Embedding projects can use this to test their own plans the same way.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from mountplan._kernel.namespaces import enter_private_namespaces

__all__ = ["SandboxError", "is_privileged", "mount_table_snapshot", "run_in_sandbox"]

T = TypeVar("T")



class SandboxError(RuntimeError):
    """The sandbox could not be set up, or its child died without reporting."""


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


def enter_namespaces() -> None:
    """Enter fresh namespaces in this process (pid takes effect for children)."""
    enter_private_namespaces(as_root=is_privileged())


def _send(fd: int, payload: object) -> None:
    try:
        data = pickle.dumps(payload)
    except Exception:  # noqa: BLE001 - unpicklable result or exception: send its text instead
        data = pickle.dumps(("error", None, repr(payload)))
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _child(write_fd: int, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    code = 0
    try:
        enter_namespaces()
        pid = os.fork()
        if pid == 0:  # pid 1 of the new pid namespace
            try:
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
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    except BaseException:  # noqa: BLE001 - whatever broke the sandbox is reported to the parent
        _send(write_fd, ("error", None, traceback.format_exc()))
        code = 1
    finally:
        os._exit(code & 0xFF)


def run_in_sandbox(func: Callable[..., T], *args: Any, timeout: float = 600.0, **kwargs: Any) -> T:
    """Run ``func(*args, **kwargs)`` in fresh namespaces and return its result.

    The function's exception is re-raised here with the child's traceback
    appended to its message, so a failing assertion reads naturally.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(write_fd, func, args, kwargs)
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
    if isinstance(value, BaseException):
        if isinstance(value, AssertionError):
            raise AssertionError(f"{value}\n--- traceback inside the sandbox ---\n{tb}") from None  # noqa: TRY004 - re-raised with the child traceback
        if type(value).__module__.startswith(("_pytest", "pytest")):
            raise value  # skip / xfail / fail outcomes pass through unchanged
        raise value from SandboxError(f"raised inside the sandbox:\n{tb}")
    raise SandboxError(f"inside the sandbox:\n{tb}")
