"""Every example plan in plans/ is valid, with no warnings, and the docs match the schema."""

from __future__ import annotations

import pathlib

import pytest

from mountplan.loader import check
from mountplan.loader.docgen import render
from mountplan.model import MountKind

REPO = pathlib.Path(__file__).resolve().parents[2]
PLANS = sorted((REPO / "plans").glob("*.yaml"))


def test_the_required_example_plans_exist() -> None:
    """plans/ holds the examples the engine tests apply."""
    names = {path.stem for path in PLANS}
    assert {"demo", "build-action", "overlay", "nested", "readonly-rbind"} <= names


@pytest.mark.parametrize("path", PLANS, ids=[path.stem for path in PLANS])
def test_example_plan_is_valid_on_this_kernel(path: pathlib.Path) -> None:
    """check() accepts the plan strictly, with no diagnostic at all (every fs type exists here)."""
    plan, diagnostics = check(path.read_bytes(), filename=path.name, strict_kernel=True)
    assert diagnostics == []
    assert plan is not None and plan.name == path.stem


def test_build_action_binds_device_nodes_without_nodev() -> None:
    """The device-node binds in build-action.yaml drop the default nodev."""
    plan, _ = check((REPO / "plans" / "build-action.yaml").read_bytes(), filename="b")
    assert plan is not None
    devices = [m for m in plan.mounts if m.name.startswith("dev-") and m.kind is MountKind.BIND]
    assert [m.target for m in devices] == [f"dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")]
    assert all("nodev" not in {a.value for a in m.attrs} for m in devices)
    # /dev/ptmx -> pts/ptmx is a node on the devpts mount: it must not be nodev either.
    assert "nodev" not in {a.value for a in plan.mount("dev-pts").attrs}


def test_docs_are_generated_from_the_schema() -> None:
    """docs/plan-format.md is exactly what `python -m mountplan.loader.docgen` prints."""
    committed = (REPO / "docs" / "plan-format.md").read_text(encoding="utf-8")
    assert committed == render(), "regenerate: python -m mountplan.loader.docgen > docs/plan-format.md"
