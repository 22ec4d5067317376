"""mountplan: declarative mount plans for Linux, applied with the new mount API.

    import mountplan
    plan = mountplan.load("plans/build-action.yaml")
    with mountplan.applied(plan, roots={"input": "/srv/action/root"}):
        ...  # run the action; everything is unmounted afterwards
"""

from __future__ import annotations

from mountplan.api import applied, apply, compile, destroy, load, recover
from mountplan.errors import (
    BusyError,
    CompileError,
    ExecutionError,
    FeatureMissingError,
    KernelError,
    LockError,
    MountplanError,
    PlanError,
    RootError,
    StalePlanError,
    StateError,
)
from mountplan.model import Plan

__version__ = "0.1.0"

__all__ = [
    "BusyError",
    "CompileError",
    "ExecutionError",
    "FeatureMissingError",
    "KernelError",
    "LockError",
    "MountplanError",
    "Plan",
    "PlanError",
    "RootError",
    "StalePlanError",
    "StateError",
    "applied",
    "apply",
    "compile",
    "destroy",
    "load",
    "recover",
]
