"""``python -m mountplan``."""

from __future__ import annotations

from mountplan.cli import console

console()
