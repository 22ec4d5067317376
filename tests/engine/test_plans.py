"""Every example plan in plans/ applies, re-applies with no change, and destroys cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mountplan
from mountplan.testing import mount_table_snapshot

PLANS = sorted((Path(__file__).parents[2] / "plans").glob("*.yaml"))

pytestmark = pytest.mark.mountns


def _prepare(plan: mountplan.Plan, base: Path) -> dict[str, str]:
    """One empty directory per root, plus the directories example plans read from."""
    roots = {}
    for root in plan.roots:
        path = base / f"root-{root.name}"
        for sub in ("toolchain/bin", "base", "lower", "srv/data"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        roots[root.name] = str(path)
    return roots


def _listing(path: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, ds, fs in os.walk(path) for n in ds + fs)


@pytest.mark.parametrize("plan_path", PLANS, ids=[p.stem for p in PLANS])
def test_example_plan_round_trip(tmp_path: Path, plan_path: Path) -> None:
    """apply makes every mount and object, a second apply changes nothing, destroy restores table and tree."""
    plan = mountplan.load(plan_path)
    roots = _prepare(plan, tmp_path)
    trees = {name: _listing(path) for name, path in roots.items()}
    before = mount_table_snapshot()
    state = str(tmp_path / "state")
    first = mountplan.apply(plan, roots, state_dir=state)
    planned = {m.name for m in plan.mounts} | {o.name for o in plan.objects}
    assert set(first.created) == planned
    second = mountplan.apply(plan, roots, state_dir=state)
    assert not second.changed and set(second.unchanged) == planned
    mountplan.destroy(plan, roots, state_dir=state)
    assert mount_table_snapshot() == before
    assert {name: _listing(path) for name, path in roots.items()} == trees
