"""The engine: executes compiled steps as a transaction, journaled on tmpfs."""

from __future__ import annotations

from .backend import Backend, FaultInjector, KernelBackend
from .detached import DetachedTree, Mechanism
from .executor import ApplyResult, DestroyResult, Engine, RecoverResult
from .roots import RootHandle, RootSet, open_roots
from .state import StateStore, default_state_dir

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
