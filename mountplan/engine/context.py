"""What every engine operation needs besides its transaction: the kernel seam and the run's options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Context:
    """Immutable per-Engine settings; safe to share between threads."""

    backend: Any  # a Backend: KernelBackend, or a FaultInjector wrapping it
    lazy: bool = False  # MNT_DETACH a busy mount instead of failing
