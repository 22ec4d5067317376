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
    """Every (path, schema) under a ``properties`` keyword, at any depth.

    Rules marked ``x-semantic-check`` are skipped: they constrain keys declared
    (with title, description and examples) elsewhere, and declare none.
    """
    if isinstance(node, dict):
        if "x-semantic-check" in node:
            return
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
    # Semantic rules the schema repeats for editors (x-semantic-check items).
    "atime-conflict",
    "atime-conflict-in-defaults",
    "bind-relative-host-path",
    "bind-root-absolute",
    "bind-root-climbs",
    "bind-root-itself",
    "mountpoint-file-for-filesystem",
    "idmap-on-filesystem",
    "idmap-beside-bind",
    "idmap-count-zero",
    "idmap-short-line",
    "idmap-userns-and-uids",
    "idmap-gids-without-uids",
    "idmap-empty",
    "idmap-userns-relative",
    "idmap-too-many-lines",
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


def full_schema_accepts(plan: dict[str, Any]) -> bool:
    """What check-jsonschema decides: the packaged schema with every rule, semantic ones included."""
    return Draft202012Validator(schema()).is_valid(plan)


def check_accepts(plan: dict[str, Any]) -> bool:
    built, _ = check(json.dumps(plan), filename="plan.yaml")
    return built is not None


def one_mount_plan(mount: Any, defaults: Any = None) -> dict[str, Any]:
    plan: dict[str, Any] = {"version": 1, "name": "p", "roots": {"input": {}}, "mounts": [mount]}
    if defaults is not None:
        plan["defaults"] = defaults
    return plan


@settings(max_examples=300, deadline=None)
@given(_mounts)
def test_full_schema_rejects_only_what_check_rejects(mount: dict[str, Any]) -> None:
    """The schema editors and check-jsonschema use is never stricter than `mountplan validate`."""
    plan = one_mount_plan(mount)
    if not full_schema_accepts(plan):
        assert not check_accepts(plan), mount


_atime_lists = st.lists(st.sampled_from(["ro", "noatime", "relatime", "strictatime", "nodev"]), max_size=4)
_bind_paths = st.sampled_from(
    [".", "./", "./.", ".//./", "..", "../x", "a/..", "a/../b", "a/./b", "...", ".x", "x/.", "/", "/usr", "//x", "usr"]
)


@settings(max_examples=300, deadline=None)
@given(
    attrs=_atime_lists,
    default_attrs=st.one_of(st.none(), _atime_lists),
    bind_path=_bind_paths,
    bind_root=st.booleans(),
    is_bind=st.booleans(),
    kind=st.sampled_from([None, "file", "directory"]),
)
def test_full_schema_and_check_agree_on_the_semantic_rules_it_repeats(
    attrs: list[str],
    default_attrs: list[str] | None,
    bind_path: str,
    bind_root: bool,
    is_bind: bool,
    kind: str | None,
) -> None:
    """One atime mode per list, bind paths absolute or beneath their root, file mountpoints for binds only."""
    mount: dict[str, Any] = {"name": "m", "target": "t", "attrs": attrs}
    if is_bind:
        mount["bind"] = {"path": bind_path, **({"root": "input"} if bind_root else {})}
    else:
        mount["type"] = "tmpfs"
    if kind is not None:
        mount["mountpoint"] = {"kind": kind}
    plan = one_mount_plan(mount, None if default_attrs is None else {"attrs": default_attrs})
    assert full_schema_accepts(plan) == check_accepts(plan), plan


def test_the_loader_reports_each_semantic_rule_once() -> None:
    """The schema's copies of semantic rules do not add jsonschema's wording to the loader's diagnostic."""
    path = CORPUS / "atime-conflict.yaml"
    _, diagnostics = check(path.read_bytes(), filename=path.name)
    assert len(diagnostics) == 1 and "conflicting attributes" in diagnostics[0].message


def test_editor_keywords_accompany_every_description_and_pattern() -> None:
    """yaml-language-server renders markdownDescription and shows patternErrorMessage instead of a regex."""

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "x-semantic-check" in node:
                return  # its enum and patterns are never offered as completions
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    nodes = list(walk(schema()))
    described = [node for node in nodes if isinstance(node.get("description"), str)]
    assert described and all(node.get("markdownDescription") for node in described)
    patterned = [node for node in nodes if isinstance(node.get("pattern"), str)]
    assert patterned and all(node.get("patternErrorMessage") for node in patterned)
    enums = [node for node in nodes if len(node.get("enum", [])) > 1]
    assert all(len(node["markdownEnumDescriptions"]) == len(node["enum"]) for node in enums)


def test_schema_id_is_https() -> None:
    """The $id is a stable https URL, not a URN editors cannot load."""
    assert schema()["$id"].startswith("https://")


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for sub in node.values():
            yield from _nodes(sub)
    elif isinstance(node, list):
        for sub in node:
            yield from _nodes(sub)


def test_error_messages_sit_where_editors_show_them() -> None:
    """No errorMessage stands beside ``not``: yaml-language-server reports a failed ``not`` with its own
    "Matches a schema that is not allowed." and drops the errorMessage (scripts/check-editor-schema shows it)."""
    with_message = [n for n in _nodes(schema()) if "errorMessage" in n or "patternErrorMessage" in n]
    assert len(with_message) > 10
    assert [n["errorMessage"] for n in with_message if "not" in n] == []
