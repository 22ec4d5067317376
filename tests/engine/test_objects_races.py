"""Planned objects under attack: path changes, races at the seams, vanished and reused inodes.

Each test reproduces a finding of the review of planned objects on the real
kernel: an object moved in the plan, a directory swapped in right after
mkdirat, an inode number handed out again after a killed apply, an object that
vanishes after its mode change was journaled, a foreign object at a planned
path. None of them may leave anything of ours behind or touch anything not ours.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import _plans
import pytest

from mountplan.changes import Action
from mountplan.engine import Engine
from mountplan.engine.backend import KernelBackend
from mountplan.errors import ExecutionError, KernelError
from mountplan.model import ObjectKind, ObjectSpec, Plan, RootSpec

pytestmark = pytest.mark.mountns

R = _plans.ROOT


def _plan(*objects: ObjectSpec) -> Plan:
    return Plan(name="races", roots=(RootSpec(R),), mounts=(), objects=objects)


def _file(path: str, mode: int = 0o644, name: str = "f") -> ObjectSpec:
    return ObjectSpec(name, R, path, ObjectKind.FILE, mode=mode)


def _engine(tmp_path: Path, backend: Any = None) -> Engine:
    return Engine(state_dir=str(tmp_path / "state"), backend=backend)


def test_a_moved_object_is_replaced_and_destroy_leaves_the_root_empty(tmp_path: Path, root_dir: str) -> None:
    """The plan moves file ``f`` from a/one to b/two: -/+ (path forces replacement); destroy leaves nothing."""
    engine = _engine(tmp_path)
    before = _plans.snapshot(root_dir)
    engine.apply(_plan(_file("a/one")), {R: root_dir})
    moved = _plan(_file("b/two"))
    (change,) = engine.plan(moved, {R: root_dir}).changes
    assert change.action is Action.REPLACE and change.reason == "path forces replacement"
    assert [(f.field, f.live, f.planned) for f in change.fields] == [("path", "r:a/one", "r:b/two")]
    assert engine.apply(moved, {R: root_dir}).replaced == ("f",)
    assert not os.path.exists(f"{root_dir}/a") and stat.S_ISREG(os.lstat(f"{root_dir}/b/two").st_mode)
    assert not engine.plan(moved, {R: root_dir}).has_changes
    engine.destroy(moved, {R: root_dir})
    assert _plans.snapshot(root_dir) == before
