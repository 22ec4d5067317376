"""mountplan: declarative mount plans for Linux, applied with the new mount API.

    import mountplan
    plan = mountplan.load("plans/build-action.yaml")
    with mountplan.applied(plan, roots={"input": "/srv/action/root"}):
        ...  # run the action; everything is unmounted afterwards
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

#: The one place the version is written: pyproject.toml reads it (setuptools
#: ``dynamic = ["version"]``), the CLI's ``--version`` prints it.
__version__ = "0.1.0"

_API = frozenset(
    {"applied", "apply", "apply_saved", "compile", "destroy", "diff", "load", "plan", "recover", "save_plan"}
)


def __getattr__(name: str) -> Any:
    # The API pulls in networkx (~150 ms); load it on first use so that
    # `mountplan --help` and error paths start fast.
    if name in _API:
        from mountplan import api

        return getattr(api, name)
    raise AttributeError(f"module 'mountplan' has no attribute {name!r}")


if TYPE_CHECKING:
    from mountplan.api import (
        applied,
        apply,
        apply_saved,
        compile,
        destroy,
        diff,
        load,
        plan,
        recover,
        save_plan,
    )

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
    "apply_saved",
    "compile",
    "destroy",
    "diff",
    "load",
    "plan",
    "recover",
    "save_plan",
]
