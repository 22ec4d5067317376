"""Reconcile tells the truth and converges (issue 12, items 1, 2, 4, 7, 8), on the real kernel.

Each test failed on main 7c7f03d as its docstring says.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from _plans import tmpfs
from _profiles import needs_engine, needs_mount_setattr

from mountplan._kernel.constants import MountAttr
from mountplan.changes import Action
from mountplan.engine import Engine
from mountplan.livetable import LiveMount, read_live_table
from mountplan.model import Attr, BindSource, MountSpec, Option, Plan, RootSpec, SourceRef

pytestmark = [pytest.mark.mountns, pytest.mark.kernelreach, needs_engine]


def _plan(*mounts: MountSpec, roots: tuple[RootSpec, ...] = (RootSpec("r"),)) -> Plan:
    return Plan(name="truth", roots=roots, mounts=mounts)


def _top(path: str) -> LiveMount:
    return read_live_table().at(path)[-1]


def test_tmpfs_mode_change_is_a_replacement_that_takes(tmp_path: Path, root_dir: str) -> None:
    """mode 0755 -> 0700: `-/+` "forces replacement", the kernel then shows mode=700, and plan is clean.

    On main: "1 updated" on every apply, the kernel kept mode=755 forever.
    """
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(_plan(tmpfs("t", "t", Option("mode", "0755"))), {"r": root_dir})
    new = _plan(tmpfs("t", "t", Option("mode", "0700")))
    changes = engine.plan(new, {"r": root_dir})
    (change,) = changes.changes
    assert change.action is Action.REPLACE and "forces replacement" in change.reason
    result = engine.apply(new, {"r": root_dir})
    assert result.replaced == ("t",)
    assert "mode=700" in _top(f"{root_dir}/t").super_options
    assert not engine.plan(new, {"r": root_dir}).has_changes


def test_an_option_dropped_from_the_plan_is_reset_by_replacement(tmp_path: Path, root_dir: str) -> None:
    """size: 4M removed from the plan: the mount goes back to the default, not "No changes" with size=4096k."""
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(_plan(tmpfs("t", "t", Option("size", "4M"))), {"r": root_dir})
    new = _plan(tmpfs("t", "t"))
    engine.apply(new, {"r": root_dir})
    assert "size=4096k" not in _top(f"{root_dir}/t").super_options
    assert not engine.plan(new, {"r": root_dir}).has_changes


def test_overlay_layer_change_replaces_the_mount(tmp_path: Path, root_dir: str) -> None:
    """lowerdir+ [l1] -> [l2]: replaced, and the merged view shows l2.

    On main: "1 updated", then "No changes", and the merged view still showed l1.
    """
    for layer in ("l1", "l2", "l0"):
        os.makedirs(f"{root_dir}/{layer}")
        Path(f"{root_dir}/{layer}/{layer}").write_text(layer)

    def overlay(layer: str) -> MountSpec:
        return MountSpec("ovl", "r", "merged", fs_type="overlay", source="overlay",
                         options=(Option("lowerdir+", layer), Option("lowerdir+", "l0")))

    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(_plan(overlay("l1")), {"r": root_dir})
    assert sorted(os.listdir(f"{root_dir}/merged")) == ["l0", "l1"]
    result = engine.apply(_plan(overlay("l2")), {"r": root_dir})
    assert result.replaced == ("ovl",)
    assert sorted(os.listdir(f"{root_dir}/merged")) == ["l0", "l2"]
    assert not engine.plan(_plan(overlay("l2")), {"r": root_dir}).has_changes


def test_superblock_read_only_drift_is_seen_and_fixed(tmp_path: Path, root_dir: str) -> None:
    """`mount -o remount,ro` on our tmpfs: plan names the superblock, apply makes it writable again.

    On main: apply said "1 updated", writes still failed with EROFS, and plan said "No changes".
    """
    plan = _plan(tmpfs("t", "t"))
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(plan, {"r": root_dir})
    point = f"{root_dir}/t"
    # What `mount -o remount,ro` does, made with the new API (mount(8) refuses it in a user namespace).
    from mountplan._kernel import fsconfig_reconfigure, fsconfig_set_flag, fspick

    fs = fspick(-100, point)
    try:
        fsconfig_set_flag(fs.fileno(), "ro")
        fsconfig_reconfigure(fs.fileno())
    finally:
        fs.close()
    with pytest.raises(OSError) as info:
        Path(point, "f").write_text("x")
    assert info.value.errno == errno.EROFS
    (change,) = engine.plan(plan, {"r": root_dir}).changes
    assert change.action is Action.UPDATE and "superblock" in [f.field for f in change.fields]
    assert engine.apply(plan, {"r": root_dir}).updated == ("t",)
    Path(point, "f").write_text("x")
    assert not engine.plan(plan, {"r": root_dir}).has_changes


def test_bind_source_in_another_root_applies(tmp_path: Path, root_dir: str) -> None:
    """`bind: {root: a, path: ...}` on a mount in root b: all of the plan's roots are open during apply.

    On main: "bind source root 'a' is not open".
    """
    other = tmp_path / "other"
    (other / "src").mkdir(parents=True)
    (other / "src" / "hello").write_text("hi")
    plan = _plan(
        MountSpec("view", "r", "view", bind=BindSource(SourceRef("src", "a"), False)),
        roots=(RootSpec("r"), RootSpec("a")),
    )
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(plan, {"r": root_dir, "a": str(other)})
    assert os.listdir(f"{root_dir}/view") == ["hello"]
    engine.destroy(plan, {"r": root_dir, "a": str(other)})


# Ids the sandbox's user namespace maps (only 0 when unprivileged), spelled as the
# kernel's base-0 parser accepts them and Python's int() does not.
@pytest.mark.parametrize(("key", "value"), [("uid", "0x0"), ("gid", "00"), ("nr_blocks", "256")])
def test_numbers_the_kernel_accepts_converge(tmp_path: Path, root_dir: str, key: str, value: str) -> None:
    """tmpfs uid in hex, gid with a leading 0 (octal), nr_blocks: apply, then plan says no changes.

    On main: uid 0x3e8 crashed plan and apply with ValueError; nr_blocks showed drift forever.
    """
    plan = _plan(tmpfs("t", "t", Option(key, value)))
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(plan, {"r": root_dir})
    assert not engine.plan(plan, {"r": root_dir}).has_changes
    assert not engine.apply(plan, {"r": root_dir}).changed


@pytest.mark.cgroupns
def test_cgroup2_flags_are_not_drift(tmp_path: Path, root_dir: str) -> None:
    """cgroup2 `nsdelegate` right after apply: no drift (its flags are machine-wide, not the mount's).

    On main: `nsdelegate -> (absent)` right after apply, and no apply cleared it.
    """
    plan = _plan(MountSpec("cg", "r", "cg", fs_type="cgroup2", source="cgroup2", options=(Option("nsdelegate"),)))
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(plan, {"r": root_dir})
    assert not engine.plan(plan, {"r": root_dir}).has_changes
    engine.destroy(plan, {"r": root_dir})


def test_a_new_parent_mount_cascades_to_the_planned_mounts_beneath_it(tmp_path: Path, root_dir: str) -> None:
    """Adding a tmpfs at x over a managed x/y replaces x/y inside it, instead of shadowing it.

    On main: "1 created, 1 unchanged", x/y shadowed and unreachable, plan said "No changes".
    """
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(_plan(tmpfs("y", "x/y")), {"r": root_dir})
    plan = _plan(tmpfs("x", "x"), tmpfs("y", "x/y"))
    changes = {c.mount: c for c in engine.plan(plan, {"r": root_dir}).changes}
    assert changes["x"].action is Action.CREATE
    assert changes["y"].action is Action.REPLACE and "cascade" in changes["y"].reason
    result = engine.apply(plan, {"r": root_dir})
    assert result.created == ("x",) and result.replaced == ("y",)
    assert [m.source for m in read_live_table().at(f"{root_dir}/x/y")] == ["y"]
    Path(f"{root_dir}/x/y/reachable").write_text("")  # the live y is the one on top, inside the new x
    assert not engine.plan(plan, {"r": root_dir}).has_changes
    engine.destroy(plan, {"r": root_dir})
    assert read_live_table().beneath(root_dir) == []


def test_foreign_mounts_anywhere_beneath_a_root_are_reported(tmp_path: Path, root_dir: str) -> None:
    """A tmpfs at ROOT/foreign or ROOT/scratch/sub (not a planned target) shows up in plan.

    On main: neither plan nor diff showed them.
    """
    plan = _plan(tmpfs("scratch", "scratch"))
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(plan, {"r": root_dir})
    for sub in ("foreign", "scratch/sub"):
        os.makedirs(f"{root_dir}/{sub}")
        subprocess.run(["mount", "-t", "tmpfs", "handmade", f"{root_dir}/{sub}"], check=True)
    foreign = engine.plan(plan, {"r": root_dir}).foreign
    assert sorted(f.mount_point for f in foreign) == [f"{root_dir}/foreign", f"{root_dir}/scratch/sub"]
    assert all(f.source == "handmade" for f in foreign)


def test_recover_finishes_a_destroy_that_stopped_at_ebusy(tmp_path: Path, root_dir: str) -> None:
    """destroy stops at EBUSY (a process holds a mount); once it lets go, `recover` finishes the destroy.

    On main: recover reported "0 undone, 0 left" and the mounts stayed.
    """
    from mountplan.errors import BusyError

    plan = _plan(tmpfs("a", "a"), tmpfs("b", "b"))
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(plan, {"r": root_dir})
    holder = os.open(f"{root_dir}/a", os.O_RDONLY | os.O_DIRECTORY)
    with pytest.raises(BusyError):
        engine.destroy(plan, {"r": root_dir})
    assert [m.source for m in read_live_table().beneath(root_dir)] == ["a"]
    os.close(holder)
    result = engine.recover()
    assert result.leftovers == () and any("'a'" in u for u in result.undone)
    assert read_live_table().beneath(root_dir) == []


@needs_mount_setattr
def test_recursive_bind_attributes_are_checked_and_fixed_on_every_submount(tmp_path: Path, root_dir: str) -> None:
    """`attrs: [ro]` on a recursive bind: a submount remounted rw by hand is drift, and apply fixes it.

    On main: plan said "No changes" with a submount rw, and apply fixed the top mount only.
    """
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "hostsub", str(host / "sub")], check=True)
    plan = _plan(MountSpec("rb", "r", "rb", bind=BindSource(SourceRef(str(host)), True), attrs=frozenset({Attr.RO})))
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(plan, {"r": root_dir})
    sub = f"{root_dir}/rb/sub"
    assert _top(sub).attrs & MountAttr.RDONLY
    subprocess.run(["mount", "-o", "remount,bind,rw", sub], check=True)
    assert not _top(sub).attrs & MountAttr.RDONLY
    (change,) = engine.plan(plan, {"r": root_dir}).changes
    assert change.action is Action.UPDATE and [f.field for f in change.fields] == [f"attrs.beneath:{sub}"]
    assert engine.apply(plan, {"r": root_dir}).updated == ("rb",)
    assert _top(sub).attrs & MountAttr.RDONLY
    assert not engine.plan(plan, {"r": root_dir}).has_changes


def test_plan_asks_the_kernel_without_changing_anything(tmp_path: Path, root_dir: str) -> None:
    """`size: 12Q` and a bind of a missing path: plan names both with the kernel's words; nothing mounted.

    On main: both showed "Plan: 2 to add" and apply failed later.
    """
    from mountplan.testing import mount_table_snapshot

    plan = _plan(
        tmpfs("bad", "bad", Option("size", "12Q")),
        MountSpec("gone", "r", "gone", bind=BindSource(SourceRef(str(tmp_path / "nonexistent")), False)),
        tmpfs("good", "good", Option("size", "1M")),
    )
    before = mount_table_snapshot()
    changes = Engine(state_dir=str(tmp_path / "s")).plan(plan, {"r": root_dir})
    assert len(changes.problems) == 2
    bad, gone = changes.problems
    assert bad.startswith("bad (r:bad): ") and "size" in bad and "EINVAL" in bad
    assert gone.startswith("gone (r:gone): ") and "No such file" in gone
    assert "Apply would fail" in changes.summary()
    assert mount_table_snapshot() == before and os.listdir(root_dir) == []


def test_plan_shows_what_a_killed_apply_left_and_recover_will_undo(tmp_path: Path, root_dir: str) -> None:
    """A killed apply: plan lists the pending journal, and its half-made mounts are not called foreign.

    On main: plan listed mountplan's own half-made mounts as foreign, with no word of the journal.
    """
    import signal

    plan = _plan(tmpfs("a", "a"), tmpfs("b", "b"))
    state = str(tmp_path / "s")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        from mountplan.engine.backend import KernelBackend

        class KillBeforeSecondMount(KernelBackend):
            count = 0

            @staticmethod
            def move_mount(*args: object, **kwargs: object) -> None:
                KillBeforeSecondMount.count += 1
                if KillBeforeSecondMount.count == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                KernelBackend.move_mount(*args, **kwargs)  # type: ignore[misc]

        try:
            Engine(state_dir=state, backend=KillBeforeSecondMount()).apply(plan, {"r": root_dir})
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    changes = Engine(state_dir=state).plan(plan, {"r": root_dir})
    assert changes.foreign == ()
    assert any("undo mount 'a'" in p for p in changes.pending), changes.pending
    Engine(state_dir=state).recover()
    assert read_live_table().beneath(root_dir) == []


def test_a_drifted_bind_shows_the_attributes_it_will_have(tmp_path: Path, root_dir: str) -> None:
    """A ro bind of a nodev,noatime source, remounted rw by hand: plan shows `ro,nodev,noatime`, what apply restores.

    On main: `attrs: nodev,noatime -> ro,relatime`, while apply kept noatime.
    """
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nodev,noatime", "src", str(src)], check=True)
    plan = _plan(MountSpec("b", "r", "b", bind=BindSource(SourceRef(str(src)), False), attrs=frozenset({Attr.RO})))
    engine = Engine(state_dir=str(tmp_path / "s"))
    engine.apply(plan, {"r": root_dir})
    subprocess.run(["mount", "-o", "remount,bind,rw,nodev,noatime", f"{root_dir}/b"], check=True)
    (change,) = engine.plan(plan, {"r": root_dir}).changes
    (field,) = change.fields
    assert (field.field, field.planned, field.live) == ("attrs", "ro,nodev,noatime", "nodev,noatime")
    engine.apply(plan, {"r": root_dir})
    assert not engine.plan(plan, {"r": root_dir}).has_changes
