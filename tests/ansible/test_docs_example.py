"""docs/ansible.md's playbook runs as documented, against localhost in a private namespace."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from _ansible import BIN, REPO, ansible_env, mounts_beneath, needs_ansible

pytestmark = needs_ansible

DOC = REPO / "docs" / "ansible.md"


def _site_yml() -> str:
    """The page's playbook: its one ```yaml block that names hosts."""
    blocks: list[str] = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    playbooks = [block for block in blocks if "hosts:" in block]
    assert len(playbooks) == 1
    return playbooks[0]


def _playbook(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook with Ansible's defaults (no pipelining), as the page's commands run it, on localhost."""
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            # Already root here (or root of the sandbox's user namespace): no sudo to become with.
            "-e",
            "ansible_become=false",
            "-e",
            f"mountplan_state_dir={workdir / 'state'}",
            "site.yml",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=ansible_env(workdir / "ansible-home"),
        timeout=300,
        check=False,
    )


@pytest.mark.mountns
def test_the_documented_playbook_mounts_and_removes_the_sandbox(tmp_path: Path) -> None:
    """site.yml with --diff mounts scratch and usr beneath the sandbox root; -e sandbox_state=absent removes them."""
    (tmp_path / "site.yml").write_text(_site_yml())
    sandbox = tmp_path / "sandbox"  # the playbook makes it
    applied = _playbook(tmp_path, "--diff", "-e", f"sandbox_root={sandbox}")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "+scratch  (sandbox:scratch)" in applied.stdout and "+usr  (sandbox:usr)" in applied.stdout
    assert re.search(r"localhost\s*: ok=3\s+changed=2 ", applied.stdout), applied.stdout  # the directory, the mounts
    mounted = dict(mounts_beneath(str(sandbox)))
    assert mounted["scratch"] == "tmpfs" and "usr" in mounted
    # The page's second command, once the root exists: a check run that finds nothing to change.
    checked = _playbook(tmp_path, "--check", "--diff", "-e", f"sandbox_root={sandbox}")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"localhost\s*: ok=3\s+changed=0 ", checked.stdout), checked.stdout
    removed = _playbook(tmp_path, "-e", f"sandbox_root={sandbox}", "-e", "sandbox_state=absent")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert re.search(r"localhost\s*: ok=2\s+changed=1 ", removed.stdout), removed.stdout
    assert mounts_beneath(str(sandbox)) == []


@pytest.mark.mountns
def test_check_mode_on_a_fresh_host_needs_the_root_as_the_page_says(tmp_path: Path) -> None:
    """--check --diff before the root exists fails the mountplan task with exit 3 (RootError), as the page warns."""
    (tmp_path / "site.yml").write_text(_site_yml())
    sandbox = tmp_path / "sandbox"
    checked = _playbook(tmp_path, "--check", "--diff", "-e", f"sandbox_root={sandbox}")
    assert checked.returncode != 0
    assert "exit 3 (RootError)" in checked.stdout + checked.stderr
    assert not sandbox.exists()
    assert "exit 3 (`RootError" in DOC.read_text().replace("\n", " ")
