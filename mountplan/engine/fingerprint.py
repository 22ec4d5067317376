"""Fingerprints of mount definitions and compiled plans kept for equal plans: pure functions of the plan."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
from typing import Any

from mountplan.compiler import CompiledPlan, compile_apply
from mountplan.model import MountSpec, Plan

_SCALARS = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
#: Fields added after fingerprints were first stored: left out while unset, so a
#: mount applied by an older mountplan keeps its fingerprint (and is not replaced).
_ADDED_FIELDS = frozenset({"idmap"})


def _canonical(value: Any) -> Any:
    # Hot for big plans (every mount of every apply): plain scalars first, and
    # dataclass field names looked up once per class, not per value.
    cls = type(value)
    if cls in _SCALARS:
        return value
    names = _FIELD_NAMES.get(cls)
    if names is not None:
        return {
            name: _canonical(item)
            for name in names
            if (item := getattr(value, name)) is not None or name not in _ADDED_FIELDS
        }
    if isinstance(value, frozenset | set):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(value))
        return _canonical(value)
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    return value


@functools.lru_cache(maxsize=16384)
def fingerprint(spec: MountSpec) -> str:
    """Identity of a mount's definition; a change means the mount must be replaced.

    Canonical JSON, not repr(): frozenset order depends on per-process hash seeds.
    """
    text = json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def compiled_for(plan: Plan) -> CompiledPlan:
    """The compiled steps of ``plan``, kept for the next apply of an equal plan.

    A build worker applies the same plan for every action; compiling is a pure
    function of the plan, so an equal plan (hash + ==, a few µs per mount) reuses
    it. The engine only reads a CompiledPlan.
    """
    return compile_apply(plan)
