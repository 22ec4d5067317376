"""The collection as Ansible sees it: ansible-doc renders the module, its documentation matches its options, it builds.

ansible-test sanity would check more, but it downloads a pip bootstrap script
from Ansible's own file server before each test; these checks need nothing
beyond ansible-core.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import yaml
from _ansible import BIN, COLLECTION, COLLECTIONS, MODULE, ansible_env, needs_ansible

import mountplan

pytestmark = needs_ansible


def _ansible_doc(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ansible-doc"), "-t", "module", *args, MODULE],
        capture_output=True,
        text=True,
        env=ansible_env(tmp_path / "ansible-home"),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def _argument_spec() -> dict[str, dict[str, Any]]:
    """The module's argument spec, imported the way Ansible lays the collection out."""
    sys.path.insert(0, str(COLLECTIONS))
    try:
        module = importlib.import_module("ansible_collections.mountplan.mountplan.plugins.modules.plan")
        spec: dict[str, dict[str, Any]] = module.argument_spec()
        return spec
    finally:
        sys.path.remove(str(COLLECTIONS))


def test_ansible_doc_renders_the_module(tmp_path: Path) -> None:
    """`ansible-doc` shows the module with its options, examples and return values, and warns about nothing."""
    result = _ansible_doc(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    for section in ("OPTIONS", "EXAMPLES", "RETURN VALUES"):
        assert section in result.stdout
    for option in _argument_spec():
        assert f"{option} " in result.stdout or f"{option}\n" in result.stdout, option


def test_the_documented_options_are_the_argument_spec(tmp_path: Path) -> None:
    """DOCUMENTATION names exactly the options the module accepts, with the same types, defaults and choices."""
    result = _ansible_doc(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    documented = json.loads(result.stdout)[MODULE]["doc"]["options"]
    spec = _argument_spec()
    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert doc["type"] == option["type"], name
        assert doc.get("default") == option.get("default"), name
        assert doc.get("choices") == option.get("choices"), name
        assert doc["description"], name


def test_the_examples_use_documented_options_only(tmp_path: Path) -> None:
    """Every EXAMPLES task is YAML that calls the module with options it has."""
    result = _ansible_doc(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)[MODULE]
    examples = yaml.safe_load(entry["examples"])
    assert examples
    for task in examples:
        assert set(task[MODULE]) <= set(entry["doc"]["options"]), task["name"]


def test_the_collection_builds_with_mountplans_version(tmp_path: Path) -> None:
    """galaxy.yml carries mountplan's version, and `ansible-galaxy collection build` packs the module and its utils."""
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    assert galaxy["version"] == mountplan.__version__
    result = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", str(COLLECTION), "--output-path", str(tmp_path)],
        capture_output=True,
        text=True,
        env=ansible_env(tmp_path / "ansible-home"),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    artifact = tmp_path / f"mountplan-mountplan-{mountplan.__version__}.tar.gz"
    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
    utils = {"plugins/module_utils/mountplan_cli.py", "plugins/module_utils/mountplan_state.py"}
    expected = {"MANIFEST.json", "meta/runtime.yml", "plugins/modules/plan.py", *utils}
    assert expected <= names
