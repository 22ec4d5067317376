"""What apply and recover report back: plain frozen data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply did: mounts created, left as they were, and replaced."""

    plan: str
    created: tuple[str, ...]
    unchanged: tuple[str, ...]
    replaced: tuple[str, ...]
    state_file: str
    updated: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.created or self.replaced or self.updated or self.pruned)


@dataclass(frozen=True, slots=True)
class RecoverResult:
    undone: tuple[str, ...]
    leftovers: tuple[str, ...]
