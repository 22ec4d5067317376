"""Hostile and random input never raises: the loader answers with diagnostics only."""

from __future__ import annotations

import pathlib

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mountplan.loader import MAX_DEPTH, MAX_FILE_BYTES, check
from mountplan.loader.diagnostics import Diagnostic

REPO = pathlib.Path(__file__).resolve().parents[2]
VALID = [path.read_bytes() for path in sorted((REPO / "plans").glob("*.yaml"))]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_well_formed(data: str | bytes) -> list[Diagnostic]:
    plan, diagnostics = check(data, filename="fuzz.yaml")
    assert (plan is None) == any(d.is_error for d in diagnostics)
    for diagnostic in diagnostics:
        assert diagnostic.line >= 1 and diagnostic.col >= 1 and diagnostic.message
    return diagnostics


@FUZZ
@given(st.binary(max_size=512))
def test_binary_garbage_gives_diagnostics(data: bytes) -> None:
    """Random bytes never raise."""
    assert_well_formed(data)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("ab: -[]{},'\"\n\t&*!<>|#?%@`0~.")), max_size=200))
def test_random_yaml_punctuation_gives_diagnostics(text: str) -> None:
    """Text made of YAML syntax characters never raises."""
    assert_well_formed(text)


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_plans_give_diagnostics(plan: bytes, data: st.DataObject) -> None:
    """Byte flips, truncations and deleted lines of valid plans never raise."""
    mutated = bytearray(plan)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    assert_well_formed(bytes(mutated))
    assert_well_formed(plan[: data.draw(st.integers(0, len(plan)))])
    lines = plan.splitlines(keepends=True)
    drop = data.draw(st.integers(0, len(lines) - 1))
    assert_well_formed(b"".join(lines[:drop] + lines[drop + 1 :]))


_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=8),
        st.sampled_from(["tmpfs", "ro", "/x", "..", "input", "bind", "type"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "version",
                    "name",
                    "roots",
                    "mounts",
                    "defaults",
                    "target",
                    "type",
                    "bind",
                    "attrs",
                    "after",
                    "root",
                    "path",
                    "options",
                    "mountpoint",
                    "mode",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=30,
)


@FUZZ
@given(_json)
def test_generated_documents_give_diagnostics(document: object) -> None:
    """Arbitrary YAML documents built from plan-like keys never raise."""
    assert_well_formed(yaml.safe_dump(document))


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_key_deleted_plans_give_diagnostics(plan: bytes, data: st.DataObject) -> None:
    """Deleting any key from a valid plan's structure never raises."""
    document = yaml.safe_load(plan)
    mounts = document["mounts"]
    mount = mounts[data.draw(st.integers(0, len(mounts) - 1))]
    del mount[data.draw(st.sampled_from(sorted(mount)))]
    if data.draw(st.booleans()):
        del document[data.draw(st.sampled_from(sorted(document)))]
    assert_well_formed(yaml.safe_dump(document))


def test_empty_file_is_one_error() -> None:
    """An empty file says the plan is empty."""
    (diagnostic,) = assert_well_formed(b"")
    assert "empty" in diagnostic.message


def test_ten_megabyte_file_is_refused_by_size() -> None:
    """A file over MAX_FILE_BYTES is refused before parsing."""
    (diagnostic,) = assert_well_formed(b"#" * (10 * 1000 * 1000))
    assert str(MAX_FILE_BYTES) in diagnostic.message


def test_ten_thousand_levels_of_nesting_is_refused() -> None:
    """Deep nesting ends in one error on line 1, without recursion errors.

    Block nesting is stopped by the loader at MAX_DEPTH. In flow style the YAML
    scanner reads ahead of the parser and may stop first with its own limit,
    worded by the YAML library: the test accepts either, without the wording.
    """
    for text in ("[" * 10_000 + "]" * 10_000, "{a: " * 10_000 + "}" * 10_000):
        (diagnostic,) = assert_well_formed(text)
        assert diagnostic.is_error and diagnostic.line == 1
        assert f"deeper than {MAX_DEPTH}" in diagnostic.message or diagnostic.message.startswith("invalid YAML: ")
    (diagnostic,) = assert_well_formed("- " * 10_000 + "x\n")
    assert f"deeper than {MAX_DEPTH}" in diagnostic.message


def test_non_utf8_bytes_are_located() -> None:
    """Invalid UTF-8 is reported at the offending byte's line and column."""
    (diagnostic,) = assert_well_formed(b"version: 1\nname: caf\xe9\n")
    assert (diagnostic.line, diagnostic.col) == (2, 10)


def test_utf16_file_with_bom_is_read() -> None:
    """A UTF-16 file with a byte-order mark is decoded like UTF-8."""
    text = "version: 1\nname: p\nroots: {r: {}}\nmounts: []\n"
    assert assert_well_formed(text.encode("utf-16")) == []


def test_utf8_bom_is_ignored() -> None:
    """A UTF-8 byte-order mark does not shift positions or fail the plan."""
    assert assert_well_formed(b"\xef\xbb\xbfversion: 1\nname: p\nroots: {r: {}}\nmounts: []\n") == []


def test_lone_surrogate_in_text_is_a_diagnostic() -> None:
    """A str holding a lone surrogate (from a bad decode upstream) is refused, not raised on."""
    (diagnostic,) = assert_well_formed("name: \ud800\n")
    assert "U+D800" in diagnostic.message
