"""Diagnostics: one problem in a plan, located by file, line and column."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Diagnostic", "Severity", "did_you_mean", "sort_diagnostics"]


class Severity(enum.Enum):
    """How bad a diagnostic is: an ERROR rejects the plan, a WARNING does not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a plan; ``line`` and ``col`` are 1-based.

    ``str()`` renders the compiler-style ``FILE:LINE:COL: error: MESSAGE`` line.
    """

    file: str
    line: int
    col: int
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity.value}: {self.message}"

    def to_json(self) -> dict[str, str | int]:
        """A JSON-ready dict with a stable key order."""
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "severity": self.severity.value,
            "message": self.message,
        }

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Deduplicate and order by position, errors before warnings, then by message."""
    return sorted(
        set(diagnostics),
        key=lambda d: (d.file, d.line, d.col, d.severity is not Severity.ERROR, d.message),
    )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ``"; did you mean 'x'?"`` suffix naming the closest choice, or ``""``."""
    import difflib  # only for a misspelt plan, never on a cached load

    matches = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""
