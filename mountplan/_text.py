"""Terminal-safe text: escape what a terminal would interpret instead of show.

A target, a bind source, a process name read from ``/proc/PID/comm`` or a file
name read from ``/proc/PID/fd`` is chosen by whoever wrote the plan or by a
process in the sandbox. Printed raw, ``ESC [2J`` clears the reader's screen,
``ESC ]0;…BEL`` retitles the window and a carriage return or a newline forges
a line of output. Like systemd's ``cescape()`` and util-linux's ``fputs_quoted``,
every non-printable character is written as a C-style escape (``\\a``, ``\\t``,
``\\x1b``, ``\\u202e``), so the text shows what is there and does nothing.
"""

from __future__ import annotations

__all__ = ["printable", "printable_lines"]

_NAMED = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not UTF-8, smuggled through os.fsdecode's surrogateescape:
        # show the byte (writing the lone surrogate would fail with UnicodeEncodeError).
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character (newline included) C-escaped.

    Printable text, spaces and backslashes are left as they are, so the function
    is idempotent and ordinary messages are unchanged. What counts as printable
    is :meth:`str.isprintable`: control characters (C0, DEL, C1), format
    characters such as bidirectional overrides, separators other than the
    space, surrogates and unassigned code points are escaped.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def printable_lines(text: str) -> str:
    """Like :func:`printable`, but newlines stay: for multi-line output whose lines are structure."""
    if text.isprintable():
        return text
    return "\n".join(printable(line) for line in text.split("\n"))
