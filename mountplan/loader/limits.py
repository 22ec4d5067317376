"""Size limits a plan must stay within, so a hostile or broken file cannot exhaust the loader."""

from __future__ import annotations

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_MOUNTS"]

#: Largest plan file accepted, in bytes (before decoding).
MAX_FILE_BYTES = 8 * 1024 * 1024

#: Most mounts one plan may hold.
MAX_MOUNTS = 10_000

#: Deepest nesting of YAML mappings and sequences (a normal plan needs 5).
MAX_DEPTH = 32
