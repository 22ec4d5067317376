"""Run real ansible-core against localhost with the repository's collection, and read what each task returned.

ansible-core is an optional test dependency (``scripts/test-ansible`` installs a
pinned version): ``needs_ansible`` skips at collection time when it is missing.
Playbooks are built from Python data; a callback plugin of the tests
(callback_plugins/record_results.py) writes every task's result to a JSON file,
which is how a test sees what the module returned.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mountplan.testing import read_mount_records

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections" / "mountplan" / "mountplan"
MODULE = "mountplan.mountplan.plan"
BIN = Path(sys.executable).parent

HAS_ANSIBLE = (BIN / "ansible-playbook").exists() and importlib.util.find_spec("ansible") is not None
needs_ansible = pytest.mark.skipif(
    not HAS_ANSIBLE, reason="ansible-core is not installed here (scripts/test-ansible installs it and runs these tests)"
)


def ansible_env(home: Path) -> dict[str, str]:
    """The environment for ansible-* commands: this collection, a private ANSIBLE_HOME, mountplan on PATH."""
    home.mkdir(exist_ok=True)
    # Made beforehand, so the module does not warn that it had to make it.
    (home / "remote-tmp").mkdir(mode=0o700, exist_ok=True)
    config = home / "ansible.cfg"
    config.write_text("[defaults]\n")  # no ansible.cfg from the working directory or the machine
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / "remote-tmp"),
        ANSIBLE_CONFIG=str(config),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    env.pop("ANSIBLE_STDOUT_CALLBACK", None)
    return env


@dataclass(frozen=True, slots=True)
class PlaybookRun:
    """One ansible-playbook run: its exit status, output, and each registered task result by name."""

    returncode: int
    stdout: str
    stderr: str
    results: dict[str, dict[str, Any]]


def run_playbook(
    workdir: Path, tasks: list[dict[str, Any]], *flags: str, interpreter: str = sys.executable
) -> PlaybookRun:
    """Run ``tasks`` with ``connection: local`` on localhost; ``results`` holds each task's result by task name."""
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": interpreter},
            "tasks": tasks,
        }
    ]
    book = workdir / "playbook.yml"
    book.write_text(yaml.safe_dump(play, sort_keys=False))
    dump = workdir / "results.json"
    dump.unlink(missing_ok=True)
    env = ansible_env(workdir / "ansible-home")
    env.update(
        ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).parent / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="record_results",
        MOUNTPLAN_TEST_RESULTS=str(dump),
        # One process per task instead of a temporary directory, a copy and a chmod: same module, less time.
        ANSIBLE_PIPELINING="1",
    )
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(book), *flags],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=300,
        check=False,
    )
    results = json.loads(dump.read_text()) if dump.exists() else {}
    return PlaybookRun(result.returncode, result.stdout, result.stderr, results)


def plan_task(name: str, params: dict[str, Any], **keywords: Any) -> dict[str, Any]:
    """A task of the module with ``params``, named (and registered as) ``name``; ``keywords`` are task keywords."""
    return {"name": name, MODULE: params, "register": name, **keywords}


def mounts_beneath(root: str) -> list[tuple[str, str]]:
    """(mount point relative to root, fs type) of every mount beneath ``root`` in this namespace."""
    prefix = root.rstrip("/") + "/"
    return sorted(
        (record.mount_point[len(prefix) :], record.fs_type)
        for record in read_mount_records()
        if record.mount_point.startswith(prefix)
    )
