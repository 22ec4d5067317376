"""Ownership, re-apply and destroy on the mountinfo/32-bit-id fallback (issue 11).

These run on every kernel, and in CI under the emulated profiles too (marker
``kernelreach``), where statx hides unique ids and statmount is gone: there a
32-bit id is reused at once, and on main 7c7f03d a second apply stacked a copy
of every mount, destroy left them, and destroy unmounted a stranger's tmpfs
that had received our old id.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _plans import bind, tmpfs
from _profiles import needs_engine

from mountplan._kernel import statx_mount_ids
from mountplan._kernel.constants import MountAttr
from mountplan._kernel.constants import Propagation as KernelPropagation
from mountplan.engine import Engine
from mountplan.livetable import read_live_table
from mountplan.model import Attr, Option, Plan, Propagation, RootSpec, SourceRef
from mountplan.testing import mount_table_snapshot

pytestmark = [pytest.mark.mountns, pytest.mark.kernelreach, needs_engine]


def _plan() -> Plan:
    return Plan(name="fallback", roots=(RootSpec("r"),), mounts=(
        tmpfs("a", "a", Option("size", "1m")),
        tmpfs("b", "a/b"),
        bind("usr", "usr", SourceRef("/usr"), recursive=False),
    ))


def test_second_apply_is_a_no_op_and_destroy_restores_the_table(tmp_path: Path, root_dir: str) -> None:
    """apply, apply, destroy: the second changes nothing, destroy leaves the table exactly as before."""
    before = mount_table_snapshot()
    engine = Engine(state_dir=str(tmp_path / "state"))
    first = engine.apply(_plan(), {"r": root_dir})
    assert set(first.created) == {"a", "b", "usr"}
    second = engine.apply(_plan(), {"r": root_dir})
    assert not second.changed and set(second.unchanged) == {"a", "b", "usr"}
    assert len(read_live_table().beneath(root_dir)) == 3
    assert not engine.plan(_plan(), {"r": root_dir}).has_changes
    result = engine.destroy(_plan(), {"r": root_dir})
    assert set(result.removed) == {"a", "b", "usr"}
    assert mount_table_snapshot() == before


def test_a_stranger_that_got_our_32_bit_id_survives_destroy(tmp_path: Path, root_dir: str) -> None:
    """Ours is unmounted by hand and a foreign tmpfs (same source name) takes its place and its old id."""
    plan = Plan(name="reuse", roots=(RootSpec("r"),), mounts=(tmpfs("a", "a"),))
    engine = Engine(state_dir=str(tmp_path / "state"))
    engine.apply(plan, {"r": root_dir})
    point = f"{root_dir}/a"
    ours = read_live_table().at(point)[-1].mnt_id_old
    subprocess.run(["umount", point], check=True)
    for _ in range(50):
        subprocess.run(["mount", "-t", "tmpfs", "a", point], check=True)  # the same source name as ours
        if read_live_table().at(point)[-1].mnt_id_old == ours:
            break
        subprocess.run(["umount", point], check=True)
    else:
        raise AssertionError("the kernel never reused the 32-bit id in 50 tries")
    stranger = statx_mount_ids(-100, point)
    engine.destroy(plan, {"r": root_dir})
    after = read_live_table().at(point)
    assert [m.mnt_id_old for m in after] == [ours], "the stranger's mount was unmounted"
    assert statx_mount_ids(-100, point).mnt_id == stranger.mnt_id
    assert os.path.isdir(point)


def test_attributes_and_propagation_land_with_or_without_mount_setattr(tmp_path: Path, root_dir: str) -> None:
    """A read-only, nosuid bind and a shared tmpfs get exactly what the plan says.

    Under the 5.6 and container profiles mount_setattr is gone: attributes go
    through a bind remount and propagation through mount(2), both on the
    mount's own fd, right after it is attached.
    """
    plan = Plan(name="attrs", roots=(RootSpec("r"),), mounts=(
        bind("ro", "ro", SourceRef("/usr"), recursive=False, attrs=frozenset({Attr.RO, Attr.NOSUID})),
        tmpfs("shared", "shared", propagation=Propagation.SHARED),
    ))
    engine = Engine(state_dir=str(tmp_path / "state"))
    engine.apply(plan, {"r": root_dir})
    ro = read_live_table().at(f"{root_dir}/ro")[-1]
    assert ro.attrs & MountAttr.RDONLY and ro.attrs & MountAttr.NOSUID
    assert read_live_table().at(f"{root_dir}/shared")[-1].propagation is KernelPropagation.SHARED
    assert not engine.plan(plan, {"r": root_dir}).has_changes
    engine.destroy(plan, {"r": root_dir})
    assert read_live_table().beneath(root_dir) == []
