"""The plan schema: valid 2020-12, fully documented, packaged, and in agreement with check-jsonschema."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from mountplan.loader import check, schema
from mountplan.loader._schema import _is_surely_valid_mount, _validators

REPO = pathlib.Path(__file__).resolve().parents[2]
SCHEMA_LINK = REPO / "schemas" / "mountplan.schema.json"
CORPUS = pathlib.Path(__file__).parent / "corpus"
PLANS = sorted((REPO / "plans").glob("*.yaml"))
CHECK_JSONSCHEMA = pathlib.Path(sys.executable).parent / "check-jsonschema"


def walk_properties(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, schema) under a ``properties`` keyword, at any depth."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield f"{where}.{name}", sub
        for key, sub in node.items():
            yield from walk_properties(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            yield from walk_properties(sub, f"{where}[{index}]")


def test_schema_is_valid_draft_2020_12() -> None:
    """The schema passes the 2020-12 metaschema and has an $id and a title."""
    document = schema()
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] and document["title"]


def test_every_property_has_title_description_and_examples() -> None:
    """Editors get a title, a description and an example for every key."""
    document = schema()
    root_validator = Draft202012Validator(document)
    properties = list(walk_properties(document))
    assert len(properties) > 20
    for where, sub in properties:
        assert sub.get("title") and sub.get("description") and sub.get("examples"), where
        for example in sub["examples"]:
            assert root_validator.evolve(schema=sub).is_valid(example), (where, example)


def test_schemas_dir_is_a_relative_symlink_to_the_packaged_schema() -> None:
    """schemas/mountplan.schema.json is a relative symlink to the package's copy."""
    assert SCHEMA_LINK.is_symlink()
    target = pathlib.Path(SCHEMA_LINK.readlink())
    assert not target.is_absolute()
    assert json.loads(SCHEMA_LINK.read_text()) == schema()


def run_check_jsonschema(*files: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--schemafile", str(SCHEMA_LINK), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_check_jsonschema_accepts_every_example_plan() -> None:
    """The example plans pass check-jsonschema, as they pass check()."""
    result = run_check_jsonschema(*PLANS)
    assert result.returncode == 0, result.stdout + result.stderr


SCHEMA_INVALID = [
    "unknown-mount-key",
    "unknown-attribute",
    "type-and-bind",
    "neither-type-nor-bind",
    "version-2",
    "absolute-target",
    "climbing-target",
    "mountpoint-mode-int",
    "options-on-bind",
    "roots-empty",
    "propagation-unknown",
    "mountpoint-create-yes",
]


@pytest.mark.parametrize("name", SCHEMA_INVALID)
def test_check_jsonschema_rejects_what_check_rejects(name: str) -> None:
    """For schema-level mistakes, check-jsonschema and check() both reject the plan."""
    path = CORPUS / f"{name}.yaml"
    plan, diagnostics = check(path.read_bytes(), filename=path.name)
    assert plan is None and diagnostics
    result = run_check_jsonschema(path)
    assert result.returncode == 1, result.stdout + result.stderr


_names = st.sampled_from(["tmp", "proc", "a", "-x", "", 3, None])
_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.text(max_size=4), st.floats(allow_nan=False)
)
_mounts = st.fixed_dictionaries(
    {"name": _names, "target": st.sampled_from(["tmp", "/tmp", "a/../..", "", ".", 1])},
    optional={
        "type": st.sampled_from(["tmpfs", "over lay", "", 7]),
        "bind": st.one_of(
            st.fixed_dictionaries(
                {"path": st.sampled_from(["/usr", "", "x"])},
                optional={"root": _names, "recursive": _values, "extra": _values},
            ),
            _values,
        ),
        "root": _names,
        "source": st.sampled_from(["s", "", 1]),
        "options": st.one_of(
            st.dictionaries(
                st.sampled_from(["size", "a=b", "lowerdir+", ""]),
                st.one_of(_values, st.lists(_values, max_size=2)),
            ),
            _values,
        ),
        "attrs": st.one_of(
            st.lists(st.sampled_from(["ro", "nosuid", "nosiud", "noatime", 1]), max_size=3), _values
        ),
        "inherit_attrs": _values,
        "propagation": st.sampled_from(["private", "shared", "x", None]),
        "mountpoint": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "create": _values,
                    "kind": st.sampled_from(["file", "dir"]),
                    "mode": st.sampled_from(["0755", "1777", "999", 493]),
                },
            ),
            _values,
        ),
        "after": st.one_of(st.lists(_names, max_size=3), _values),
        "atrs": _values,
    },
)


@settings(max_examples=400, deadline=None)
@given(_mounts)
def test_fast_mount_check_implies_schema_valid(mount: dict[str, Any]) -> None:
    """The fast path used for big plans never accepts a mount the schema rejects."""
    _, mount_validator, ident, target = _validators()
    if _is_surely_valid_mount(mount, ident, target):
        assert mount_validator.is_valid(mount), mount
