"""mountplan: declarative mount plans for Linux, applied with the new mount API."""

from __future__ import annotations

__version__ = "0.1.0"
