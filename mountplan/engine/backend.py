"""The seam between the engine and the kernel.

The engine issues every syscall through a :class:`Backend`. :class:`KernelBackend`
is the real thing; :class:`FaultInjector` wraps it and fails the Nth call, which
is how the tests prove that rollback works after a failure at *every* step on a
real kernel (the mounts before the failure are real mounts).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Protocol

from mountplan import _kernel
from mountplan.errors import KernelError

#: The calls the engine makes through a backend.
CALLS = (
    "fsopen",
    "fsconfig_set_flag",
    "fsconfig_set_string",
    "fsconfig_set_fd",
    "fsconfig_create",
    "fsmount",
    "open_tree",
    "mount_setattr",
    "move_mount",
    "openat2",
    "openat2_if_exists",
    "mkdirat",
    "statx_mount_ids",
    "umount_at",
    "detach_fd",
    "root_evidence",
    "remount_attrs",
    "set_propagation",
    "fspick",
    "fsconfig_reconfigure",
    "symlinkat",
    "create_file",
    "open_directory",
    "fchmod",
    "fchown",
    "unlinkat",
    "make_userns",
    "open_userns",
)


class Backend(Protocol):
    """Anything with the kernel layer's wrappers under the same names."""

    def __getattr__(self, name: str) -> Callable[..., Any]: ...


class KernelBackend:
    """Forwards to :mod:`mountplan._kernel`.

    The wrappers are bound as class attributes (below), not looked up per call:
    a plan of thousands of mounts makes tens of thousands of calls.
    """


for _name in CALLS:
    setattr(KernelBackend, _name, staticmethod(getattr(_kernel, _name)))
del _name


class FaultInjector:
    """Fail the ``fail_at``-th call (1-based) whose name is in ``names``.

    ``calls`` records every call's name so a test can first count the calls of a
    clean run and then fail each one in turn.
    """

    def __init__(
        self,
        inner: Any | None = None,
        *,
        fail_at: int | None = None,
        names: frozenset[str] | None = None,
        err: int = errno.EIO,
    ) -> None:
        self._inner = inner if inner is not None else KernelBackend()
        self.fail_at = fail_at
        self.names = names
        self.err = err
        self.calls: list[str] = []
        self.counted = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        func = getattr(self._inner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.names is None or name in self.names:
                self.counted += 1
                if self.fail_at is not None and self.counted == self.fail_at:
                    raise KernelError(self.err, name, hint="injected fault")
            return func(*args, **kwargs)

        return wrapper
