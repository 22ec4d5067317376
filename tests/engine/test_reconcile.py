"""Drift detection and reconciliation against the live table, on the real kernel."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _profiles import needs_engine

from mountplan._kernel import fsconfig_reconfigure, fsconfig_set_string, fspick
from mountplan._kernel.constants import MountAttr
from mountplan._kernel.constants import Propagation as KProp
from mountplan.changes import Action
from mountplan.engine import Engine, FaultInjector
from mountplan.errors import ExecutionError
from mountplan.livetable import LiveMount, read_live_table
from mountplan.model import Attr, MountSpec, Option, Plan, RootSpec

pytestmark = [pytest.mark.mountns, pytest.mark.kernelreach, needs_engine]

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
    with pytest.raises(ExecutionError, match="covered by a mount mountplan did not make"):
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


def _drift(root_dir: str) -> None:
    """Drift of every kind an update fixes: attributes, propagation and a superblock option."""
    subprocess.run(["mount", "-o", "remount,bind,ro,noexec", f"{root_dir}/tmp"], check=True)
    subprocess.run(["mount", "--make-shared", f"{root_dir}/tmp"], check=True)
    with fspick(-100, f"{root_dir}/tmp") as ctx:
        fsconfig_set_string(ctx.fileno(), "size", "8M")
        fsconfig_reconfigure(ctx.fileno())


def _shape(path: str) -> tuple[object, ...]:
    m = _live(path)
    return (m.mnt_id, m.attrs, m.propagation, m.super_options)


def test_in_place_updates_are_undone_when_a_later_step_fails(tmp_path: Path, root_dir: str) -> None:
    """An apply that updates a drifted mount in place and then fails creating another mount puts the
    drifted mount back exactly as it was (attributes, propagation type, size) and names the failed step;
    the state still holds the old definition, so the next apply updates it again."""
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(_plan(TMP), {"r": root_dir})
    _drift(root_dir)
    before = _shape(f"{root_dir}/tmp")
    assert before[2] is KProp.SHARED and MountAttr.RDONLY in before[1] and "size=8192k" in before[3]
    plan = _plan(TMP, MountSpec("new", "r", "new", fs_type="tmpfs"))
    with pytest.raises(ExecutionError) as info:
        Engine(state_dir=state, backend=FaultInjector(fail_at=1, names=frozenset({"fsmount"}))).apply(plan, {"r": root_dir})
    assert "new#" in info.value.step and "fsmount" in str(info.value) and "Everything it had done was undone" in str(info.value)
    assert _shape(f"{root_dir}/tmp") == before
    assert not read_live_table().at(f"{root_dir}/new")
    result = Engine(state_dir=state).apply(plan, {"r": root_dir})
    assert result.updated == ("tmp",) and result.created == ("new",)
    fixed = _live(f"{root_dir}/tmp")
    assert fixed.propagation is KProp.PRIVATE and not MountAttr.RDONLY & fixed.attrs and "size=65536k" in fixed.super_options


def test_update_killed_midway_is_restored_by_recover(tmp_path: Path, root_dir: str) -> None:
    """SIGKILL right after the in-place update's mount_setattr: recover restores the drifted attributes
    and propagation from the journal (the mount itself, made by an earlier apply, stays)."""
    state = str(tmp_path / "s")
    Engine(state_dir=state).apply(_plan(TMP), {"r": root_dir})
    _drift(root_dir)
    before = _shape(f"{root_dir}/tmp")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child

        class KillAfterSetattr(FaultInjector):
            def __getattr__(self, name: str) -> Any:
                func = super().__getattr__(name)

                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    result = func(*args, **kwargs)
                    if name in {"mount_setattr", "set_propagation"}:  # the last call of the update
                        os.kill(os.getpid(), signal.SIGKILL)
                    return result

                return wrapper

        try:
            Engine(state_dir=state, backend=KillAfterSetattr()).apply(_plan(TMP), {"r": root_dir})
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert _live(f"{root_dir}/tmp").propagation is KProp.PRIVATE  # the update did happen
    result = Engine(state_dir=state).recover()
    assert result.leftovers == () and any("in-place update of 'tmp'" in u for u in result.undone), result
    assert _shape(f"{root_dir}/tmp") == before
