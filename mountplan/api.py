"""The public Python API: load, plan, apply, destroy, diff, applied, detached.

Roots map a root name to a directory path (a ``str`` or any ``os.PathLike``, such
as :class:`pathlib.Path`) or to an already-open directory fd owned by the caller
(mountplan never closes it). Everything raises subclasses of
:class:`mountplan.errors.MountplanError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Protocol, TypeAlias

from mountplan.changes import ChangeSet
from mountplan.compiler import CompiledPlan, compile_apply, compile_destroy
from mountplan.engine import ApplyResult, DestroyResult, DetachedTree, Engine, RecoverResult
from mountplan.model import Plan

__all__ = [
    "applied", "apply", "apply_saved", "compile", "destroy", "detached", "diff", "load", "plan", "recover", "save_plan",
]

#: A plan object, or the path of a plan file to :func:`load`.
PlanLike: TypeAlias = Plan | str | os.PathLike[str]
#: A filesystem path: ``str`` or any ``os.PathLike[str]`` (``pathlib.Path``).
StrPath: TypeAlias = str | os.PathLike[str]
#: Root name -> directory path, or an open directory fd the caller keeps owning.
Roots: TypeAlias = Mapping[str, StrPath | int]


class EngineLike(Protocol):
    """What :func:`apply` and :func:`destroy` need of ``engine=``: a
    :class:`mountplan.engine.Engine`, or a stand-in with the same two methods."""

    def apply(self, plan: Plan, roots: Mapping[str, str | int] | None = None) -> ApplyResult:
        """Make the plan's mounts."""
        ...

    def destroy(self, plan: Plan, roots: Mapping[str, str | int] | None = None) -> DestroyResult:
        """Remove what apply made."""
        ...


def _roots(roots: Roots | None) -> dict[str, str | int] | None:
    """Paths as ``str`` (``os.fspath``), fds as they are: what the engine takes."""
    if roots is None:
        return None
    return {
        name: os.fspath(value) if isinstance(value, str | os.PathLike) else value for name, value in roots.items()
    }


def _dir(state_dir: StrPath | None) -> str | None:
    return None if state_dir is None else os.fspath(state_dir)


def load(path: StrPath, *, strict_kernel: bool = True, cache: bool = False) -> Plan:
    """Load and validate a plan file; raise PlanError carrying every diagnostic.

    ``cache``: reuse the result of an earlier load of the same bytes (the
    validated-plan cache, see docs/performance.md) instead of parsing again.
    """
    from mountplan import loader

    return loader.load(path, strict_kernel=strict_kernel, cache=cache)


def _plan(plan: PlanLike) -> Plan:
    return plan if isinstance(plan, Plan) else load(plan)


def compile(plan: PlanLike, *, destroy: bool = False) -> CompiledPlan:
    """The ordered step graph for applying (or destroying) a plan."""
    p = _plan(plan)
    return compile_destroy(p) if destroy else compile_apply(p)


def plan(
    plan: PlanLike, roots: Roots | None = None, *, state_dir: StrPath | None = None, prune: bool = False
) -> ChangeSet:
    """Dry run: what ``apply`` (with ``prune``) would change, against the live table and the state. Touches nothing."""
    return Engine(state_dir=_dir(state_dir)).plan(_plan(plan), _roots(roots), prune=prune)


def diff(
    plan: PlanLike, roots: Roots | None = None, *, state_dir: StrPath | None = None
) -> ChangeSet:
    """Drift of the live table from the plan: the same change set ``plan`` computes.

    ``ChangeSet.changes`` with action UPDATE/REPLACE are drifted mounts, with every
    differing field; ``ChangeSet.foreign`` lists mounts mountplan did not make.
    """
    return Engine(state_dir=_dir(state_dir)).plan(_plan(plan), _roots(roots))


def save_plan(
    plan: PlanLike,
    out: StrPath,
    roots: Roots | None = None,
    *,
    prune: bool = False,
    state_dir: StrPath | None = None,
) -> ChangeSet:
    """Write what ``apply`` would change to ``out`` (``mountplan plan -o``); touches no mount.

    :func:`apply_saved` later carries out exactly these changes, or raises
    StalePlanError when the mounts beneath the roots or the state changed since.
    """
    saved, changes = Engine(state_dir=_dir(state_dir)).save_plan(_plan(plan), _roots(roots), prune=prune)
    saved.write(os.fspath(out))
    return changes


def apply_saved(
    path: StrPath,
    roots: Roots | None = None,
    *,
    state_dir: StrPath | None = None,
    lock_timeout: float = 30.0,
) -> ApplyResult:
    """Apply a plan saved by :func:`save_plan` exactly, or raise StalePlanError and change nothing.

    The state directory is the one the plan was saved with unless ``state_dir``
    is given; a different one raises StalePlanError naming the recorded one.
    """
    from mountplan.engine.saved import read_saved_plan

    saved = read_saved_plan(os.fspath(path))
    if saved is None:
        from mountplan.errors import PlanError
        from mountplan.loader import Diagnostic, Severity

        raise PlanError([Diagnostic(os.fspath(path), 1, 1, Severity.ERROR, "not a saved plan (see `mountplan plan -o`)")])
    return Engine(state_dir=_dir(state_dir) or saved.state_dir, lock_timeout=lock_timeout).apply_saved(saved, _roots(roots))


def apply(
    plan: PlanLike,
    roots: Roots | None = None,
    *,
    state_dir: StrPath | None = None,
    lock_timeout: float = 30.0,
    engine: EngineLike | None = None,
) -> ApplyResult:
    """Make the plan's mounts; all or nothing. A second apply changes nothing."""
    eng = engine or Engine(state_dir=_dir(state_dir), lock_timeout=lock_timeout)
    return eng.apply(_plan(plan), _roots(roots))


def destroy(
    plan: PlanLike,
    roots: Roots | None = None,
    *,
    state_dir: StrPath | None = None,
    lock_timeout: float = 30.0,
    lazy: bool = False,
    engine: EngineLike | None = None,
) -> DestroyResult:
    """Unmount what ``apply`` made (innermost first) and remove the mountpoints and objects it created."""
    eng = engine or Engine(state_dir=_dir(state_dir), lock_timeout=lock_timeout, lazy=lazy)
    return eng.destroy(_plan(plan), _roots(roots))


def recover(*, state_dir: StrPath | None = None, lock_timeout: float = 30.0) -> RecoverResult:
    """Undo whatever interrupted runs left in their journals."""
    return Engine(state_dir=_dir(state_dir), lock_timeout=lock_timeout).recover()


@contextlib.contextmanager
def applied(
    plan: PlanLike,
    roots: Roots | None = None,
    *,
    state_dir: StrPath | None = None,
    lock_timeout: float = 30.0,
    lazy: bool = False,
) -> Iterator[ApplyResult]:
    """Apply on entry, destroy on exit, even when the body raises.

    The keyword arguments are those of :func:`apply` and :func:`destroy`; the
    ``as`` target is the :class:`~mountplan.engine.ApplyResult` of the apply.

    >>> with mountplan.applied("plans/build-action.yaml", roots={"input": fd}):
    ...     run_action()
    """
    p = _plan(plan)
    names = _roots(roots)
    engine = Engine(state_dir=_dir(state_dir), lock_timeout=lock_timeout, lazy=lazy)
    result = engine.apply(p, names)
    try:
        yield result
    finally:
        engine.destroy(p, names)


def detached(plan: PlanLike, roots: Roots | None = None) -> DetachedTree:
    """Build the plan's mounts as a detached tree: in no mount table, ended by closing it.

    Each root becomes a private detached copy of itself with the planned mounts
    beneath it, checked and resolved as ``apply`` does (same errors; a failure
    closes everything made and removes the mountpoints created). No state file:
    nothing can outlive the tree's fds. See docs/detached.md.

    >>> with mountplan.detached("plans/overlay.yaml", roots={"tree": fd}) as tree:
    ...     subprocess.run([tree.path() + "/work/bin/tool"], pass_fds=[tree.fileno()])
    """
    from mountplan.engine.backend import KernelBackend
    from mountplan.engine.context import Context
    from mountplan.engine.detached import build_detached

    return build_detached(Context(KernelBackend()), _plan(plan), _roots(roots))
