"""mountplan._text.printable: what the CLI writes to a terminal is shown, never obeyed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mountplan._text import printable, printable_lines


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain /srv/root café", "plain /srv/root café"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\a"),
        ("a\tb\nc\rd\b\f\v", "a\\tb\\nc\\rd\\b\\f\\v"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("evil\u202etxt", "evil\\u202etxt"),
        ("f\udcff", "f\\xff"),
        ("back\\slash", "back\\slash"),
    ],
    ids=["printable", "csi", "osc-bel", "c-escapes", "nul-del-c1", "bidi-override", "undecodable-byte", "backslash"],
)
def test_printable_escapes_like_cescape(raw: str, shown: str) -> None:
    """C-style escapes for control and format characters; printable text unchanged."""
    assert printable(raw) == shown


def test_printable_lines_keeps_newlines_only() -> None:
    """Multi-line output keeps its line structure; everything else is escaped."""
    assert printable_lines("a\x1b\nb\r\n") == "a\\x1b\nb\\r\n"


@given(st.text())
def test_printable_output_is_printable_and_idempotent(text: str) -> None:
    """Whatever goes in, what comes out is printable and escaping it again changes nothing."""
    shown = printable(text)
    assert shown.isprintable()
    assert printable(shown) == shown
    shown.encode("utf-8")  # no lone surrogates left
