"""The validated-plan cache: a hit is the same Plan, anything doubtful is a miss, and a hit needs no YAML or schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mountplan.loader import _cache, load

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "plans" / "build-action.yaml"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache directory for this test."""
    directory = tmp_path / "cache"
    monkeypatch.setenv(_cache.ENV_VAR, str(directory))
    return directory


def _entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def test_a_cached_load_returns_the_same_plan_as_validation(cache_dir: Path) -> None:
    """The first load validates and stores; the second comes from the entry and is equal."""
    fresh = load(PLAN, cache=True)
    assert len(_entries(cache_dir)) == 1
    assert load(PLAN, cache=True) == fresh == load(PLAN)


def test_the_cache_is_off_unless_asked(cache_dir: Path) -> None:
    """A library load without ``cache=True`` writes nothing."""
    load(PLAN)
    assert not cache_dir.exists()


def test_a_changed_file_is_validated_again(cache_dir: Path, tmp_path: Path) -> None:
    """Another byte, another key: an invalid edit is reported, not served from the cache."""
    plan = tmp_path / "p.yaml"
    plan.write_bytes(PLAN.read_bytes())
    load(plan, cache=True)
    plan.write_bytes(PLAN.read_bytes().replace(b"type: tmpfs", b"type: 7mpfs!", 1))
    with pytest.raises(Exception, match="7mpfs"):
        load(plan, cache=True)


def test_an_entry_writable_by_others_is_ignored(cache_dir: Path) -> None:
    """Whoever can write an entry decides the mounts: a group/world-writable one is not trusted."""
    load(PLAN, cache=True)
    (entry,) = _entries(cache_dir)
    doc = json.loads(entry.read_text())
    doc["plan"]["fields"]["name"] = "tampered"
    entry.write_text(json.dumps(doc))
    entry.chmod(0o666)
    assert load(PLAN, cache=True).name == "build-action"


def test_an_entry_in_a_directory_open_to_others_is_ignored(cache_dir: Path) -> None:
    """The directory must be private too."""
    load(PLAN, cache=True)
    (entry,) = _entries(cache_dir)
    doc = json.loads(entry.read_text())
    doc["plan"]["fields"]["name"] = "tampered"
    entry.write_text(json.dumps(doc))
    cache_dir.chmod(0o777)
    assert load(PLAN, cache=True).name == "build-action"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("not json", id="garbage"),
        pytest.param('{"key": "other", "plan": null}', id="another-key"),
        pytest.param('{"plan": {"$class": "Plan", "fields": {"name": 1}}}', id="no-key"),
    ],
)
def test_a_corrupt_entry_is_a_miss(cache_dir: Path, content: str) -> None:
    """A torn or foreign entry never raises and never wins."""
    load(PLAN, cache=True)
    (entry,) = _entries(cache_dir)
    entry.write_text(content)
    assert load(PLAN, cache=True) == load(PLAN)


def test_an_entry_names_only_model_classes(cache_dir: Path) -> None:
    """A class name outside mountplan.model is refused (the entry is a miss), so JSON cannot build anything else."""
    load(PLAN, cache=True)
    (entry,) = _entries(cache_dir)
    doc = json.loads(entry.read_text())
    doc["plan"]["$class"] = "Popen"
    entry.write_text(json.dumps(doc))
    assert load(PLAN, cache=True) == load(PLAN)


def test_a_cache_hit_imports_neither_yaml_nor_jsonschema_nor_networkx(cache_dir: Path) -> None:
    """The point of the cache: the run path's plan load skips the validators' imports."""
    load(PLAN, cache=True)
    code = (
        "import sys; from mountplan import api; api.load(sys.argv[1], cache=True); "
        "print(sorted(m for m in ('yaml', 'jsonschema', 'networkx') if m in sys.modules))"
    )
    env = {**os.environ, _cache.ENV_VAR: str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code, str(PLAN)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
