"""Control characters in a plan's strings: none is allowed, however it was written."""

from __future__ import annotations

import re

__all__ = ["CONTROL_CHARACTER", "control_character_problem"]

#: A control character (C0, DEL, C1) in a string, however it got there: a YAML escape
#: (``"\0"``, ``"\e"``, ``"\x9b"``), a raw tab, a block scalar's newline. None has a place in
#: a plan: the kernel ends a string at NUL (``size: "1M\0,uid=0"`` would apply as
#: ``size=1M``, a bind of ``"/srv\0/../../etc"`` would bind ``/srv``), and the others
#: turn into terminal commands or forged lines wherever a target or source is printed.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_character_problem(text: str) -> str | None:
    """Why ``text`` cannot be a string in a plan (it holds a control character), or None."""
    found = CONTROL_CHARACTER.search(text)
    if found is None:
        return None
    shown = text if len(text) <= 64 else text[:61] + "..."
    char = found.group()
    if char == "\0":
        return (
            f"string {shown!r} contains a NUL byte, where the kernel would cut it short; "
            "strings in a plan may not contain NUL or other control characters"
        )
    return (
        f"string {shown!r} contains the control character U+{ord(char):04X}; "
        "strings in a plan may not contain control characters"
    )
