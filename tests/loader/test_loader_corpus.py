"""Golden diagnostics for the invalid-plan corpus (tests/loader/corpus/NAME.yaml → NAME.expected).

Run with UPDATE_GOLDEN=1 to rewrite the .expected files; review every change by eye,
the goldens are the specification of the messages.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from mountplan.loader import check

CORPUS = pathlib.Path(__file__).parent / "corpus"
CASES = sorted(path.stem for path in CORPUS.glob("*.yaml"))


def render(name: str) -> str:
    data = (CORPUS / f"{name}.yaml").read_bytes()
    _, diagnostics = check(data, filename=f"{name}.yaml")
    return "".join(f"{diagnostic}\n" for diagnostic in diagnostics)


def test_corpus_has_at_least_sixty_invalid_plans() -> None:
    """The corpus is large enough to pin down the messages."""
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", CASES)
def test_corpus_diagnostics_match_golden(name: str, fixed_kernel: frozenset[str]) -> None:
    """Each corpus plan yields exactly the diagnostics in its .expected file."""
    actual = render(name)
    expected_path = CORPUS / f"{name}.expected"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_path.write_text(actual, encoding="utf-8")
    assert actual == expected_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", CASES)
def test_corpus_plan_is_rejected_or_warned(name: str, fixed_kernel: frozenset[str]) -> None:
    """Every corpus plan produces at least one diagnostic, and no Plan when one is an error."""
    data = (CORPUS / f"{name}.yaml").read_bytes()
    plan, diagnostics = check(data, filename=f"{name}.yaml")
    assert diagnostics
    assert (plan is None) == any(d.is_error for d in diagnostics)
