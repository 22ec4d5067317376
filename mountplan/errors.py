"""The one exception tree of mountplan.

::

    MountplanError                      base of everything mountplan raises
    ├── KernelError(OSError)            a syscall failed; names op, paths, flags, errno,
    │   └── FeatureMissingError         the running kernel lacks a needed syscall
    ├── PlanError                       the plan is invalid; carries every Diagnostic
    ├── CompileError                    the plan cannot be ordered (cycle, conflict)
    ├── RootError                       a root is missing, not a directory, unusable
    ├── ExecutionError                  a step failed; carries the step, the cause
    │   │                               (``.cause``) and what rollback left behind
    │   └── BusyError                   an unmount hit EBUSY; names the holders
    ├── LockError                       another mountplan holds the state lock
    ├── StateError                      the state file is unreadable or inconsistent
    └── StalePlanError                  a saved plan no longer matches the live table,
                                        mountplan's state or a root

Each class's ``exit_code`` is the exit code the CLI uses for it (docs/cli.md).

This module imports nothing from mountplan so every layer may raise these.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "BusyError",
    "CompileError",
    "ExecutionError",
    "FeatureMissingError",
    "KernelError",
    "LockError",
    "MountplanError",
    "PlanError",
    "RootError",
    "StalePlanError",
    "StateError",
]


class MountplanError(Exception):
    """Base class of every error mountplan raises on purpose."""

    #: Process exit code the CLI uses for this kind of error (see docs/cli.md).
    exit_code: ClassVar[int] = 1


class KernelError(MountplanError, OSError):
    """A syscall failed.

    ``str()`` gives one line naming the syscall, its paths and flags, the errno
    name and every message the kernel logged in the filesystem context, plus a
    hint for errnos with a well-known cause.
    """

    exit_code = 4

    #: The syscall (or operation) that failed, such as ``"fsconfig"``.
    op: str
    #: The paths it was given.
    paths: tuple[str, ...]
    #: Its flags, as text (``"MOUNT_ATTR_RDONLY|..."``), or ``""``.
    flags: str
    #: What the kernel logged in the filesystem context (fsopen's log).
    kernel_messages: tuple[str, ...]
    #: A likely fix for an errno with a well-known cause, or ``""``.
    hint: str

    def __init__(
        self,
        err: int,
        op: str,
        *,
        paths: Sequence[str] = (),
        flags: str = "",
        kernel_messages: Sequence[str] = (),
        hint: str = "",
    ) -> None:
        super().__init__(err, _errno_text(err))
        self.op = op
        self.paths = tuple(paths)
        self.flags = flags
        self.kernel_messages = tuple(kernel_messages)
        self.hint = hint

    @property
    def errno_name(self) -> str:
        """Symbolic errno, such as ``EINVAL``."""
        return _errno.errorcode.get(self.errno or 0, f"errno {self.errno}")

    def __str__(self) -> str:
        parts = [self.op]
        if self.paths:
            parts.append(" ".join(repr(p) for p in self.paths))
        if self.flags:
            parts.append(f"[{self.flags}]")
        text = f"{' '.join(parts)}: {self.errno_name} ({self.strerror})"
        if self.kernel_messages:
            text += "; kernel says: " + "; ".join(self.kernel_messages)
        if self.hint:
            text += f"; hint: {self.hint}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_kernel_error,
            (self.errno, self.op, self.paths, self.flags, self.kernel_messages, self.hint),
        )


def _rebuild_kernel_error(
    err: int, op: str, paths: tuple[str, ...], flags: str, messages: tuple[str, ...], hint: str
) -> KernelError:
    return KernelError(err, op, paths=paths, flags=flags, kernel_messages=messages, hint=hint)


class FeatureMissingError(KernelError):
    """A syscall mountplan needs is unusable here; raised before any change.

    ``cause`` says why, and the hint gives the matching fix: ``"old-kernel"``
    (ENOSYS: "needs Linux X or newer"), ``"seccomp"`` (EPERM from the container's
    syscall filter), ``"capability"`` (EPERM: no CAP_SYS_ADMIN, "run as root or
    with --unshare"), ``"capability+seccomp"`` (both), ``"eperm"`` (EPERM that
    neither explains).
    """

    exit_code = 5

    #: The syscall that is unusable, such as ``"open_tree"``.
    syscall: str
    #: The Linux version that has it.
    since: str
    #: Why it is unusable: one of the words above.
    cause: str

    def __init__(
        self,
        syscall: str,
        since: str,
        err: int = _errno.ENOSYS,
        *,
        cause: str = "old-kernel",
        hint: str = "",
    ) -> None:
        super().__init__(err, syscall, hint=hint or self.explain(syscall, since, cause))
        self.syscall = syscall
        self.since = since
        self.cause = cause

    @classmethod
    def explain(cls, syscall: str, since: str, cause: str) -> str:
        """The hint for ``syscall`` being unusable because of ``cause``."""
        explanations = {
            "old-kernel": "{syscall} needs Linux {since} or newer",
            "seccomp": (
                "{syscall} is blocked by seccomp (the container's syscall filter): allow {syscall} "
                "in its seccomp profile (the syscall needs Linux {since} or newer)"
            ),
            "capability": "{syscall} needs CAP_SYS_ADMIN: run as root or with --unshare",
            "capability+seccomp": (
                "{syscall} needs CAP_SYS_ADMIN (run as root or with --unshare), and the seccomp filter "
                "(the container's syscall filter) blocks the new mount API (fsconfig) as well"
            ),
            "eperm": (
                "{syscall} answered EPERM although neither a seccomp filter nor a missing CAP_SYS_ADMIN "
                "explains it (a security module such as AppArmor or SELinux may deny it)"
            ),
        }
        return explanations.get(cause, explanations["old-kernel"]).format(syscall=syscall, since=since)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self._rebuild, (self.syscall, self.since, self.errno, self.cause, self.hint))

    @classmethod
    def _rebuild(cls, syscall: str, since: str, err: int, cause: str, hint: str) -> FeatureMissingError:
        return cls(syscall, since, err, cause=cause, hint=hint)


class PlanError(MountplanError):
    """The plan is invalid. ``diagnostics`` holds every problem found."""

    exit_code = 2

    #: Every problem found, in file order (``mountplan.loader.Diagnostic``).
    diagnostics: tuple[Any, ...]

    def __init__(self, diagnostics: Sequence[Any]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics) or "invalid plan")


class CompileError(MountplanError):
    """The plan cannot be turned into an ordered set of steps."""

    exit_code = 2


class RootError(MountplanError):
    """A root is missing, not a directory, or not given."""

    exit_code = 3


class ExecutionError(MountplanError):
    """A step failed during apply or destroy.

    ``step`` names the failed step, :attr:`cause` is the underlying error, and
    ``leftovers`` lists what rollback could not undo (empty when the system is
    back where it started).
    """

    exit_code = 4

    #: The failed step, such as ``"tools:attach"``, or ``""`` when no single step failed.
    step: str
    #: What rollback could not undo; empty when the system is back where it started.
    leftovers: tuple[str, ...]

    def __init__(
        self,
        message: str,
        *,
        step: str = "",
        leftovers: Sequence[str] = (),
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.leftovers = tuple(leftovers)
        self._cause = cause

    @property
    def cause(self) -> BaseException | None:
        """The underlying error: the one given as ``cause=``, else ``__cause__``.

        ``__cause__`` is set by ``raise ExecutionError(...) from exc``, as the
        engine raises a failed step (the :class:`KernelError` of the syscall that
        failed). ``None`` when the failure has no underlying exception (a mount
        that is not the one mountplan made, a journal it cannot undo).
        """
        return self._cause if self._cause is not None else self.__cause__

    def __str__(self) -> str:
        text = super().__str__()
        if self.leftovers:
            text += "\nleft behind (run `mountplan recover` later):\n" + "\n".join(
                f"  {item}" for item in self.leftovers
            )
        return text


class BusyError(ExecutionError):
    """An unmount failed with EBUSY; ``holders`` names the processes that hold it."""

    #: The processes that hold the mount (``"pid 1234 (bash): cwd"``).
    holders: tuple[str, ...]

    def __init__(
        self,
        message: str,
        *,
        step: str = "",
        holders: Sequence[str] = (),
        leftovers: Sequence[str] = (),
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message, step=step, leftovers=leftovers, cause=cause)
        self.holders = tuple(holders)


class LockError(MountplanError):
    """Another mountplan process holds the state lock past ``--lock-timeout``."""

    exit_code = 6


class StateError(MountplanError):
    """The state file cannot be read or does not match what it describes."""

    exit_code = 7


class StalePlanError(MountplanError):
    """A saved plan was made against a live table that has since changed."""

    exit_code = 8


def _errno_text(err: int) -> str:
    import os

    return os.strerror(err)
