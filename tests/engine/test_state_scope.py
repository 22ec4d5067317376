"""State is scoped to a boot and a mount namespace (issue 10 item 8).

Mount ids mean nothing in another mount namespace, and unique ids restart at
every boot: a state file or journal from elsewhere is refused, never acted on,
and ``run --unshare`` (a new mount namespace) keeps its own instance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mountplan.engine.state import (
    ForeignStateError,
    ManagedMount,
    State,
    StateStore,
    current_scope,
    instance_key,
)
from mountplan.testing import run_in_sandbox

ROOTS: dict[str, Any] = {"r": {"path": "/srv/r", "dev": 1, "ino": 2}}


def _state() -> State:
    return State("plan", ROOTS, [ManagedMount("a", "r", "/a", 2**31 + 5, True, "f")])


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return str(path)


def _written(state_dir: str) -> StateStore:
    """An instance of this namespace with a committed state and a journal left behind."""
    store = StateStore(state_dir, instance_key("plan", ROOTS))
    store.save(_state())
    store.journal_open({"plan": "plan", "roots": ROOTS})
    store.journal_write({"op": "mkdir", "mount": "a", "root": "r", "path": "/a"})
    store.journal_close(remove=False)
    return store


def test_state_and_journal_record_boot_id_and_mount_namespace(state_dir: str) -> None:
    """Both files name the boot (boot_id) and the mount namespace (inode of /proc/self/ns/mnt) they belong to."""
    store = _written(state_dir)
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    ns = os.stat("/proc/self/ns/mnt").st_ino
    scope = json.loads(Path(store.state_path).read_text())["scope"]
    header = json.loads(Path(store.journal_path).read_text().splitlines()[0])
    for recorded in (scope, header):
        assert (recorded["boot_id"], recorded["mntns"]) == (boot, ns)
    assert current_scope().mntns == ns


def _forge(path: str, line: int, **changes: Any) -> None:
    lines = Path(path).read_text().splitlines()
    doc = json.loads(lines[line])
    doc.get("scope", doc).update(changes)
    lines[line] = json.dumps(doc)
    Path(path).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"boot_id": "00000000-0000-0000-0000-000000000000"}, "another boot"),
        ({"mntns": 1}, "another mount namespace"),
        ({"mntns_id": 2**40}, "another mount namespace"),
        ({"boot_id": None}, "carries no boot and mount namespace id"),
    ],
    ids=["other-boot", "other-namespace-inode", "other-namespace-id", "unscoped"],
)
def test_state_or_journal_from_elsewhere_is_refused(state_dir: str, changes: dict[str, Any], why: str) -> None:
    """load() and journal_read() refuse a file of another boot or namespace, saying so; nothing is returned."""
    store = _written(state_dir)
    if "mntns_id" in changes and current_scope().mntns_id is None:
        pytest.skip("NS_GET_MNTNS_ID needs Linux 6.8")
    _forge(store.state_path, 0, **changes)
    _forge(store.journal_path, 0, **changes)
    with pytest.raises(ForeignStateError, match=rf"state .* {why}.*refusing to act on it"):
        store.load()
    with pytest.raises(ForeignStateError, match=rf"journal .* {why}.*refusing to act on it"):
        store.journal_read()
    assert [i.key for i in StateStore.scan(state_dir) if i.foreign] == [store.key]
    assert StateStore.instances(state_dir) == []


def _inside_new_namespace(state_dir: str, key: str) -> dict[str, Any]:
    """What a process in a fresh mount namespace (``run --unshare``) sees of the outer instance."""
    seen: dict[str, Any] = {"key": instance_key("plan", ROOTS), "instances": StateStore.instances(state_dir)}
    seen["scan"] = [(i.key, i.foreign is not None) for i in StateStore.scan(state_dir)]
    for name, call in [("load", StateStore(state_dir, key).load), ("journal", StateStore(state_dir, key).journal_read)]:
        try:
            call()
            seen[name] = "acted on"
        except ForeignStateError as exc:
            seen[name] = str(exc)
    return seen


def test_a_new_mount_namespace_has_its_own_instance_and_refuses_the_outer_one(state_dir: str) -> None:
    """``run --unshare`` gets another key; recover there skips the outer instance; loading it by key is refused."""
    store = _written(state_dir)
    seen = run_in_sandbox(_inside_new_namespace, state_dir, store.key, timeout=60)
    assert seen["key"] != store.key
    assert seen["instances"] == []
    assert seen["scan"] == [(store.key, True)]
    assert "another mount namespace" in seen["load"]
    assert "another mount namespace" in seen["journal"]
    assert StateStore.instances(state_dir) == [store.key]  # still ours out here
    assert store.load() == _state()
