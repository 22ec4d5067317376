"""The plan loader: YAML → JSON Schema → semantic checks → a frozen :class:`mountplan.model.Plan`.

Every problem is reported at once, as a :class:`Diagnostic` with file, line and
column. :func:`check` never raises for bad input; :func:`load` and
:func:`load_text` raise :class:`mountplan.errors.PlanError` carrying them all.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from typing import Any

from mountplan.errors import PlanError
from mountplan.loader._files import UnreadableFileError, read_regular_file
from mountplan.loader.diagnostics import Diagnostic, Severity, sort_diagnostics
from mountplan.loader.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_MOUNTS
from mountplan.model import Plan

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_MOUNTS",
    "Diagnostic",
    "Severity",
    "check",
    "check_file",
    "load",
    "load_text",
    "schema",
]


# The checking modules (PyYAML, jsonschema) are imported on first use: loading a
# plan that is in the validated-plan cache (see _cache) needs none of them.


def schema() -> dict[str, Any]:
    """The plan JSON Schema (draft 2020-12) shipped inside the package."""
    from mountplan.loader._schema import load_schema

    return load_schema()


def check(
    text: str | bytes, *, filename: str, strict_kernel: bool = False
) -> tuple[Plan | None, list[Diagnostic]]:
    """Validate a plan and build it.

    Returns the Plan (None iff any diagnostic is an error) and every diagnostic,
    sorted by position. An unknown filesystem type is a warning, or an error with
    ``strict_kernel=True``. Never raises for bad input.
    """
    with _gc_paused():
        return _check(text, filename, strict_kernel)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Loading allocates a tree of small containers that all stay alive, so the cyclic
    # collector's passes over it are pure overhead (about a third of a 10,000-mount load).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check(text: str | bytes, filename: str, strict_kernel: bool) -> tuple[Plan | None, list[Diagnostic]]:
    from mountplan.loader._build import build_plan
    from mountplan.loader._schema import validate
    from mountplan.loader._semantic import check_semantics
    from mountplan.loader._yaml import parse

    doc, diagnostics = parse(text, filename)
    if doc is not None:
        mounts = doc.data.get("mounts") if isinstance(doc.data, dict) else None
        if isinstance(mounts, list) and len(mounts) > MAX_MOUNTS:
            pos = doc.key_position(("mounts",))
            diagnostics.append(
                Diagnostic(
                    filename,
                    pos.line,
                    pos.col,
                    Severity.ERROR,
                    f"plan has {len(mounts)} mounts; the limit is {MAX_MOUNTS}",
                )
            )
        else:
            diagnostics.extend(validate(doc, filename))
            diagnostics.extend(check_semantics(doc, filename, strict_kernel=strict_kernel))
    diagnostics = sort_diagnostics(diagnostics)
    if doc is None or any(d.severity is Severity.ERROR for d in diagnostics):
        return None, diagnostics
    return build_plan(doc, filename), diagnostics


def load_text(text: str | bytes, *, filename: str = "<string>", strict_kernel: bool = True) -> Plan:
    """Like :func:`check`, but raise PlanError on any error (warnings are dropped)."""
    plan, diagnostics = check(text, filename=filename, strict_kernel=strict_kernel)
    if plan is None:
        raise PlanError([d for d in diagnostics if d.severity is Severity.ERROR])
    return plan


def check_file(
    path: str | os.PathLike[str], *, strict_kernel: bool = False
) -> tuple[Plan | None, list[Diagnostic]]:
    """Like :func:`check` for a file; an unreadable file is a diagnostic at 1:1.

    Only a regular file is read: a FIFO, a device or a directory is a diagnostic
    too (and never makes the caller wait).
    """
    filename = os.fspath(path)
    try:
        data = read_regular_file(filename, MAX_FILE_BYTES)
    except UnreadableFileError as exc:
        return None, [Diagnostic(filename, 1, 1, Severity.ERROR, f"cannot read plan: {exc}")]
    return check(data, filename=filename, strict_kernel=strict_kernel)


def load(path: str | os.PathLike[str], *, strict_kernel: bool = True, cache: bool = False) -> Plan:
    """Read and load the plan file at ``path``; raise PlanError with every error found.

    With ``cache``, a file whose exact bytes loaded before (same name, same
    mountplan, same kernel) comes from the validated-plan cache without being
    parsed again; see :mod:`mountplan.loader._cache` for where it lives and what
    it trusts. The CLI turns it on; a library caller opts in.
    """
    if not cache:
        plan, diagnostics = check_file(path, strict_kernel=strict_kernel)
        if plan is None:
            raise PlanError(diagnostics)
        return plan
    from mountplan.loader import _cache

    filename = os.fspath(path)
    try:
        data = read_regular_file(filename, MAX_FILE_BYTES)
    except UnreadableFileError as exc:
        raise PlanError([Diagnostic(filename, 1, 1, Severity.ERROR, f"cannot read plan: {exc}")]) from None
    key, cached = _cache.lookup(data, filename, strict_kernel)
    if cached is not None:
        return cached
    plan, diagnostics = check(data, filename=filename, strict_kernel=strict_kernel)
    if plan is None:
        raise PlanError(diagnostics)
    _cache.store(key, plan)
    return plan
