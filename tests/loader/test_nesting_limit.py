"""Nesting depth: the loader's own limit at its boundary, and any limit far beyond it, located and without a traceback."""

from __future__ import annotations

import pytest

from mountplan.loader import MAX_DEPTH, check

#: (opener, closer, width of one level in columns) for each YAML nesting style.
STYLES = [
    pytest.param("[", "]", id="flow-sequence"),
    pytest.param("{a: ", "}", id="flow-mapping"),
    pytest.param("- ", "", id="block-sequence"),
]


def nested(opener: str, closer: str, depth: int) -> str:
    """``depth`` containers, one inside the other, around a scalar."""
    if not closer:
        return opener * depth + "x\n"
    return opener * depth + closer * depth


@pytest.mark.parametrize(("opener", "closer"), STYLES)
def test_nesting_of_exactly_max_depth_is_not_refused(opener: str, closer: str) -> None:
    """MAX_DEPTH levels are allowed: any diagnostic is about the plan's shape, none about depth."""
    plan, diagnostics = check(nested(opener, closer, MAX_DEPTH), filename="deep.yaml")
    assert plan is None  # not a valid plan (its top is a list, or lacks keys) ...
    assert not [d for d in diagnostics if "nests deeper" in d.message]  # ... but not for its depth


@pytest.mark.parametrize(("opener", "closer"), STYLES)
def test_one_level_past_max_depth_is_refused_at_that_level(opener: str, closer: str) -> None:
    """The refusal points at the container that is one too deep."""
    plan, diagnostics = check(nested(opener, closer, MAX_DEPTH + 1), filename="deep.yaml")
    (diagnostic,) = diagnostics
    assert plan is None and diagnostic.is_error
    assert (diagnostic.line, diagnostic.col) == (1, MAX_DEPTH * len(opener) + 1)
    assert f"deeper than {MAX_DEPTH}" in diagnostic.message


@pytest.mark.parametrize(("opener", "closer"), STYLES)
def test_ten_thousand_levels_end_in_one_located_error(opener: str, closer: str) -> None:
    """Whichever limit stops it first (ours, or the YAML library's in flow style, worded its own way),
    the answer is one error inside the run of openers past MAX_DEPTH, and no traceback."""
    depth = 10_000
    plan, diagnostics = check(nested(opener, closer, depth), filename="deep.yaml")
    (diagnostic,) = diagnostics
    assert plan is None and diagnostic.is_error
    assert diagnostic.file == "deep.yaml" and diagnostic.line == 1
    assert MAX_DEPTH * len(opener) < diagnostic.col <= depth * len(opener)
    assert diagnostic.message and "Traceback" not in diagnostic.message
