"""Timing helpers the bench scripts share: time a callable, summarise samples as median and p95."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(func: Callable[[], object], n: int) -> list[float]:
    """Seconds each of ``n`` calls of ``func`` took (perf_counter)."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return times


def summary(label: str, seconds: list[float], *, width: int = 44, number: str = "8.2f") -> str:
    """One line: label, sample count, median and p95 in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    p95 = statistics.quantiles(ms, n=20, method="inclusive")[18] if len(ms) > 1 else ms[0]
    return f"{label:<{width}} n={len(ms):<4} median {statistics.median(ms):{number}} ms   p95 {p95:{number}} ms"
