"""The engine: executes compiled steps as a transaction, journaled on tmpfs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backend import Backend, FaultInjector, KernelBackend
from .executor import ApplyResult, DestroyResult, Engine, RecoverResult
from .roots import RootHandle, RootSet, open_roots
from .state import StateStore, default_state_dir

if TYPE_CHECKING:
    from .detached import DetachedTree, Mechanism

__all__ = [
    "ApplyResult",
    "Backend",
    "DestroyResult",
    "DetachedTree",
    "Engine",
    "FaultInjector",
    "KernelBackend",
    "Mechanism",
    "RecoverResult",
    "RootHandle",
    "RootSet",
    "StateStore",
    "default_state_dir",
    "open_roots",
]


def __getattr__(name: str) -> Any:
    # Detached trees are built only by api.build_detached: a `run` or `apply`
    # does not pay for importing them (tests/run/test_startup.py).
    if name in ("DetachedTree", "Mechanism"):
        from . import detached

        return getattr(detached, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
