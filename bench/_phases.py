"""Where an engine apply+destroy spends its time, by phase: inclusive wall time of chosen engine functions.

Each function below is wrapped with a perf_counter pair for the duration of
:func:`timed_phases` (about 1 µs per wrapped call is added, so the sum of the
small rows is a little high). Rows nest: ``apply_locked`` includes the
``run_step`` rows, which include ``_mountpoint`` and the journal writes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

#: (module, class or None, function): the phases of apply and destroy.
PHASES = (
    ("mountplan.engine.executor", "Engine", "apply"),
    ("mountplan.engine.executor", None, "apply_locked"),
    ("mountplan.engine.executor", "Engine", "_diff"),
    ("mountplan.engine.apply_run", None, "read_live_table"),
    ("mountplan.engine.attach", "Attacher", "run_step"),
    ("mountplan.engine.attach", "Attacher", "_mountpoint"),
    ("mountplan.engine.attach", "Attacher", "_journal_id"),
    ("mountplan.engine.attach", "Attacher", "_verify"),
    ("mountplan.engine.objects", "ObjectMaker", "run_step"),
    ("mountplan.engine.executor", "Engine", "destroy"),
    ("mountplan.engine.executor", None, "destroy_locked"),
    ("mountplan.engine.destroy", None, "remove_managed"),
    ("mountplan.engine.destroy", None, "_remove_objects"),
    ("mountplan.engine.executor", "Engine", "_open_roots"),
    ("mountplan.engine.executor", "Engine", "_store"),
    ("mountplan.engine.executor", None, "recover_store"),
    ("mountplan.engine.state", "StateStore", "load"),
    ("mountplan.engine.state", "StateStore", "save"),
    ("mountplan.engine.state", "StateStore", "journal_open"),
    ("mountplan.engine.state", "StateStore", "journal_write"),
)


@contextlib.contextmanager
def timed_phases() -> Iterator[tuple[defaultdict[str, float], Counter[str]]]:
    """Wrap :data:`PHASES` while the block runs; yields (seconds, calls) per phase, filled as it runs."""
    seconds: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    undo: list[Callable[[], None]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        raw = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        static = isinstance(raw, staticmethod)
        func = raw.__func__ if static else raw

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
                calls[label] += 1

        setattr(owner, name, staticmethod(timed) if static else timed)
        undo.append(lambda: setattr(owner, name, raw))

    # The attacher dispatches through a table of its methods made at import: point it at the wrappers.
    attach = importlib.import_module("mountplan.engine.attach")
    handlers = dict(attach._STEP_HANDLERS)
    try:
        for module, cls, name in PHASES:
            mod = importlib.import_module(module)
            owner = getattr(mod, cls) if cls else mod
            wrap(owner, name, f"{cls + '.' if cls else ''}{name}")
        for kind, handler in handlers.items():
            attach._STEP_HANDLERS[kind] = getattr(attach.Attacher, handler.__name__)
        yield seconds, calls
    finally:
        attach._STEP_HANDLERS.update(handlers)
        for restore in reversed(undo):
            restore()


def report(seconds: dict[str, float], calls: Counter[str], n: int) -> str:
    """One line per phase, the costliest first: ms and calls per apply+destroy."""
    return "".join(
        f"    {seconds[label] / n * 1e3:7.3f} ms  {calls[label] / n:6.1f} calls  {label}\n"
        for label in sorted(seconds, key=seconds.__getitem__, reverse=True)
    )
