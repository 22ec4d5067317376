"""A mount of ours hidden because a stranger mounted over a directory above it: never forgotten.

On main 7318b3c destroy reached ``a/b/c`` through the cover on ``a``, found no
mount there and dropped ``inner`` (and ``null``) from the state while they were
still mounted beneath the cover: once the cover went, every later destroy
failed with EBUSY on ``a`` and the two mounts were nobody's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import _plans
import pytest

from mountplan.engine import Engine
from mountplan.errors import MountplanError
from mountplan.model import MountpointKind, MountpointSpec, Plan, RootSpec, SourceRef
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

PLAN = Plan(
    name="covered-ancestor",
    roots=(RootSpec("r"),),
    mounts=(
        _plans.tmpfs("outer", "a"),
        _plans.tmpfs("inner", "a/b/c"),
        _plans.bind("null", "a/null", SourceRef("/dev/null"), recursive=False,
                    mountpoint=MountpointSpec(kind=MountpointKind.FILE, mode=0o644)),
    ),
)


def _recorded(state_dir: Path) -> list[str]:
    (path,) = state_dir.glob("*.state.json")
    return sorted(m["name"] for m in json.loads(path.read_text())["mounts"])


@pytest.mark.parametrize("cover", ["a", "a/b"])
def test_mounts_hidden_by_a_cover_stay_in_the_state_until_it_goes(root_dir: str, tmp_path: Path, cover: str) -> None:
    """Destroy keeps every mount it cannot reach; after the cover goes, destroy removes them all."""
    before = _plans.snapshot(root_dir)
    table = mount_table_snapshot()
    state = tmp_path / "state"
    engine = Engine(state_dir=str(state))
    engine.apply(PLAN, {"r": root_dir})
    where = os.path.join(root_dir, cover)
    subprocess.run(["mount", "-t", "tmpfs", "stranger", where], check=True)
    try:
        with pytest.raises(MountplanError):
            engine.destroy(PLAN, {"r": root_dir})
        hidden = {"a": ["inner", "null", "outer"], "a/b": ["inner"]}[cover]
        assert set(hidden) <= set(_recorded(state)), _recorded(state)
    finally:
        subprocess.run(["umount", where], check=True)
    engine.destroy(PLAN, {"r": root_dir})
    assert mount_table_snapshot() == table
    assert _plans.diff(before, _plans.snapshot(root_dir)) == ""
