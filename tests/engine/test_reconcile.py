"""Drift detection and reconciliation against the live table, on the real kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mountplan._kernel import fsconfig_reconfigure, fsconfig_set_string, fspick
from mountplan._kernel.constants import MountAttr
from mountplan._kernel.constants import Propagation as KProp
from mountplan.changes import Action
from mountplan.engine import Engine, FaultInjector
from mountplan.livetable import LiveMount, read_live_table
from mountplan.model import Attr, MountSpec, Option, Plan, RootSpec

pytestmark = pytest.mark.mountns

MUTATING = {"fsopen", "fsmount", "open_tree", "mount_setattr", "move_mount", "mkdirat", "umount_at", "fsconfig_reconfigure", "fspick"}


def _plan(*mounts: MountSpec) -> Plan:
    return Plan(name="drift", roots=(RootSpec("r"),), mounts=mounts)


TMP = MountSpec("tmp", "r", "tmp", fs_type="tmpfs", options=(Option("size", "64M"),), attrs=frozenset({Attr.NOSUID}))


def _live(path: str) -> LiveMount:
    return read_live_table().at(path)[-1]


def test_second_apply_issues_no_mutating_syscall(tmp_path: Path, root_dir: str) -> None:
    """apply twice: the second reports no changes and makes no mutating call."""
    state = str(tmp_path / "s")
    plan = _plan(TMP, MountSpec("sub", "r", "tmp/sub", fs_type="tmpfs"))
    Engine(state_dir=state).apply(plan, {"r": root_dir})
    recorder = FaultInjector()
    result = Engine(state_dir=state, backend=recorder).apply(plan, {"r": root_dir})
    assert not result.changed and set(result.unchanged) == {"tmp", "sub"}
    assert not MUTATING & set(recorder.calls), recorder.calls
    assert not Engine(state_dir=state).plan(plan, {"r": root_dir}).has_changes


def test_tmpfs_size_normalisation_is_not_drift(tmp_path: Path, root_dir: str) -> None:
    """size=64M reads back as size=65536k and is not reported as a change."""
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(_plan(TMP), {"r": root_dir})
    assert "size=65536k" in _live(f"{root_dir}/tmp").super_options
    changes = Engine(state_dir=state).plan(_plan(TMP), {"r": root_dir})
    assert [c.action for c in changes.changes] == [Action.NOOP]


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (["mount", "-o", "remount,bind,ro"], "attrs"),
        (["mount", "-o", "remount,bind,nosuid,noexec"], "attrs"),
        (["mount", "--make-shared"], "propagation"),
        (["resize"], "options.size"),
    ],
    ids=["remount-ro", "remount-noexec", "make-shared", "resize"],
)
def test_drift_made_by_hand_is_detected_and_fixed_in_place(
    tmp_path: Path, root_dir: str, command: list[str], field: str
) -> None:
    """Hand-made drift shows up field by field; apply fixes it without a remount (same mount id)."""
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(_plan(TMP), {"r": root_dir})
    before = _live(f"{root_dir}/tmp")
    if command == ["resize"]:
        # fspick + reconfigure, as `mount -o remount,size=8M` does; mount(8) itself
        # re-sends uid=/gid= as printed, which is unmapped inside a user namespace.
        with fspick(-100, f"{root_dir}/tmp") as ctx:
            fsconfig_set_string(ctx.fileno(), "size", "8M")
            fsconfig_reconfigure(ctx.fileno())
    else:
        subprocess.run([*command, f"{root_dir}/tmp"], check=True)
    changes = Engine(state_dir=state).plan(_plan(TMP), {"r": root_dir})
    (change,) = changes.changes
    assert change.action is Action.UPDATE
    assert field in {f.field for f in change.fields}
    assert changes.summary() == "Plan: 0 to add, 1 to change, 0 to destroy."
    result = Engine(state_dir=state).apply(_plan(TMP), {"r": root_dir})
    assert result.updated == ("tmp",)
    after = _live(f"{root_dir}/tmp")
    assert after.mnt_id == before.mnt_id
    assert after.attrs & (MountAttr.RDONLY | MountAttr.NOEXEC | MountAttr.NOSUID) == MountAttr.NOSUID
    assert after.propagation == KProp.PRIVATE
    assert "size=65536k" in after.super_options
    assert not Engine(state_dir=state).plan(_plan(TMP), {"r": root_dir}).has_changes


def test_foreign_mount_is_reported_and_left_alone(tmp_path: Path, root_dir: str) -> None:
    """A mount someone stacked on a planned target is reported, never unmounted."""
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(_plan(TMP), {"r": root_dir})
    subprocess.run(["mount", "-t", "ramfs", "intruder", f"{root_dir}/tmp"], check=True)
    changes = Engine(state_dir=state).plan(_plan(TMP), {"r": root_dir})
    assert [f.source for f in changes.foreign] == ["intruder"]
    Engine(state_dir=state).destroy(_plan(TMP), {"r": root_dir})
    assert _live(f"{root_dir}/tmp").source == "intruder"


def test_changed_definition_replaces_and_prune_removes(tmp_path: Path, root_dir: str) -> None:
    """A changed fs type is -/+; a mount dropped from the plan is - and goes with --prune."""
    state = str(tmp_path / "s")
    old = _plan(TMP, MountSpec("extra", "r", "extra", fs_type="tmpfs"))
    Engine(state_dir=state).apply(old, {"r": root_dir})
    new = _plan(MountSpec("tmp", "r", "tmp", fs_type="ramfs"))
    # Without prune, the dropped mount is kept (and said so), not a change.
    kept = Engine(state_dir=state).plan(new, {"r": root_dir})
    assert {c.mount: c.action for c in kept.changes} == {"tmp": Action.REPLACE}
    assert [c.mount for c in kept.kept] == ["extra"]
    assert kept.summary() == "Plan: 1 to add, 0 to change, 1 to destroy."
    changes = Engine(state_dir=state).plan(new, {"r": root_dir}, prune=True)
    actions = {c.mount: c.action for c in changes.changes}
    assert actions == {"tmp": Action.REPLACE, "extra": Action.DELETE}
    assert changes.summary() == "Plan: 1 to add, 0 to change, 2 to destroy."
    result = Engine(state_dir=state).apply(new, {"r": root_dir}, prune=True)
    assert result.replaced == ("tmp",) and result.pruned == ("extra",)
    assert _live(f"{root_dir}/tmp").fs_type == "ramfs"
    assert not read_live_table().at(f"{root_dir}/extra")


def test_public_plan_and_diff_functions(tmp_path: Path, root_dir: str) -> None:
    """mountplan.plan() shows '+' before apply; mountplan.diff() shows drift field by field after."""
    import mountplan

    state = str(tmp_path / "s")
    before = mountplan.plan(_plan(TMP), {"r": root_dir}, state_dir=state)
    assert [c.action for c in before.changes] == [Action.CREATE]
    assert before.has_changes and not before.has_drift  # never applied is not drift
    mountplan.apply(_plan(TMP), {"r": root_dir}, state_dir=state)
    subprocess.run(["mount", "--make-shared", f"{root_dir}/tmp"], check=True)
    drift = mountplan.diff(_plan(TMP), {"r": root_dir}, state_dir=state)
    assert [(f.field, f.live, f.planned) for c in drift.changes for f in c.fields] == [
        ("propagation", "shared", "private")
    ]
    assert drift.has_drift
