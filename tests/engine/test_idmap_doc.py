"""docs/idmap.md's example, executed: its plan and its command, and what the page says they do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mountplan._kernel.emulation import active_profile
from mountplan.testing import mount_table_snapshot

DOC = Path(__file__).parents[2] / "docs" / "idmap.md"

# Root only: the example shares a tree owned by uid 1000 (chown needs root) from the
# host's filesystem, which a user namespace may not idmap.
_PROFILE = active_profile()
pytestmark = [
    pytest.mark.mountns,
    pytest.mark.rootonly,
    pytest.mark.skipif(
        _PROFILE is not None and _PROFILE.takes_away(("mount_setattr",)),
        reason="idmapped mounts need mount_setattr, which this emulated kernel profile takes away",
    ),
]


def _doc_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def _write_as(uid: int, directory: str, name: str) -> int:
    """Create ``directory/name`` in a child running with uid and gid ``uid``; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(directory)  # before dropping root: pytest's directories above are private
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            Path(name).write_text(name)
        except BaseException:  # noqa: BLE001 - any failure is the child's answer
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def share(tmp_path: Path) -> str:
    """/srv/share of the example: cache/ and cache/tool owned by uid and gid 1000; cache/ writable by all.

    Writable by all so that the only reason a process cannot create a file through
    the mount is that its ids are not mapped.
    """
    cache = tmp_path / "share" / "cache"
    cache.mkdir(parents=True)
    (cache / "tool").write_text("tool")
    for path in (cache, cache / "tool"):
        os.chown(path, 1000, 1000)
    os.chmod(cache, 0o777)
    return str(tmp_path / "share")


@pytest.fixture
def sandbox(tmp_path: Path) -> str:
    path = tmp_path / "sandbox"
    path.mkdir()
    return str(path)


def test_documented_example_maps_the_cache_owner_to_the_sandbox_root(share: str, sandbox: str, tmp_path: Path) -> None:
    """The page's command applies its plan; 1000 shows as 100000, and 100000 writes files stored as 1000."""
    (plan_text,) = _doc_blocks("yaml")
    plan = tmp_path / "sandbox-cache.yaml"
    plan.write_text(plan_text)
    command = next(line for block in _doc_blocks("sh") for line in block.splitlines() if line.startswith("mountplan apply"))
    argv = command.split()
    assert argv[:3] == ["mountplan", "apply", "sandbox-cache.yaml"]
    argv = [sys.executable, "-m", "mountplan", "apply", str(plan), "--state-dir", str(tmp_path / "state")]
    argv += ["--root", f"share={share}", "--root", f"sandbox={sandbox}"]
    before = mount_table_snapshot()
    subprocess.run(argv, check=True, capture_output=True)
    seen = os.stat(f"{sandbox}/cache/tool")
    assert (seen.st_uid, seen.st_gid) == (100000, 100000)
    assert _write_as(100000, f"{sandbox}/cache", "built") == 0
    stored = os.stat(f"{share}/cache/built")
    assert (stored.st_uid, stored.st_gid) == (1000, 1000)
    assert _write_as(100001, f"{sandbox}/cache", "stranger") != 0  # not mapped: no file through the mount
    again = subprocess.run([*argv[:3], "plan", *argv[4:]], capture_output=True, text=True, check=True)
    assert "No changes." in again.stdout
    subprocess.run([*argv[:3], "destroy", *argv[4:]], check=True, capture_output=True)
    assert mount_table_snapshot() == before
