"""Fault injection at every backend call of a real apply: rollback leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _plans
import pytest

from mountplan.compiler import CompiledPlan, compile_apply
from mountplan.engine import Engine, attach
from mountplan.engine.backend import FaultInjector, KernelBackend
from mountplan.engine.state import StateStore
from mountplan.errors import ExecutionError
from mountplan.model import Plan

pytestmark = pytest.mark.mountns


class _StepTracer:
    """A backend that remembers, for each call, which step the engine was running."""

    def __init__(self) -> None:
        self._inner = KernelBackend()
        self.step = ""
        self.trace: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        func = getattr(self._inner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.trace.append((name, self.step))
            return func(*args, **kwargs)

        return wrapper


@contextlib.contextmanager
def _steps_told_to(tracer: _StepTracer) -> Iterator[None]:
    """Make the engine tell ``tracer`` which step runs: the oracle for ``ExecutionError.step``.

    Wraps the engine's step handlers (this test runs in a forked sandbox, so the
    patch never outlives it).
    """
    original = dict(attach._STEP_HANDLERS)

    def telling(handler: Callable[..., None]) -> Callable[..., None]:
        def run(attacher: Any, step: Any, *args: Any) -> None:
            tracer.step = step.id
            handler(attacher, step, *args)

        return run

    attach._STEP_HANDLERS.update({kind: telling(h) for kind, h in original.items()})
    try:
        yield
    finally:
        attach._STEP_HANDLERS.update(original)


def _setup(base: Path, root_dir: str) -> tuple[str, str]:
    host = str(base / "host")
    os.makedirs(host)
    os.makedirs(os.path.join(root_dir, "lower"))
    _plans.prepare_host_dir(host)
    return host, str(base / "state")


def _trace_clean_apply(plan: Plan, compiled: CompiledPlan, root_dir: str, state_dir: str) -> list[tuple[str, str]]:
    tracer = _StepTracer()
    engine = Engine(backend=tracer, state_dir=state_dir)
    with _steps_told_to(tracer):
        engine.apply(plan, {"r": root_dir}, compiled=compiled)
    trace = list(tracer.trace)
    engine.destroy(plan, {"r": root_dir})
    return trace


def _journals(state_dir: str) -> list[str]:
    return sorted(n for n in os.listdir(state_dir) if n.endswith((".journal", ".state.json")))


def _sweep(plan: Plan, root_dir: str, host: str, state_dir: str, indices: range | list[int]) -> Counter[str]:
    """Fail each call index in turn; assert a clean, complete rollback every time."""
    compiled = compile_apply(plan)
    trace = _trace_clean_apply(plan, compiled, root_dir, state_dir)
    # Baseline after one apply+destroy, so lazily created state files are not counted as leaks.
    before = _plans.snapshot(root_dir, host, state_dir)
    failed_calls: Counter[str] = Counter()
    for index in indices:
        name, step = trace[index - 1]
        injector = FaultInjector(fail_at=index)
        engine = Engine(backend=injector, state_dir=state_dir)
        with pytest.raises(ExecutionError) as info:
            engine.apply(plan, {"r": root_dir}, compiled=compiled)
        err = info.value
        where = f"fault {index}/{len(trace)} ({name} in {step})"
        assert injector.calls[index - 1] == name, f"{where}: the call sequence differs from the clean run"
        assert isinstance(err.__cause__, OSError) and "injected fault" in str(err.__cause__), where
        assert err.step == step, f"{where}: ExecutionError.step is {err.step!r}"
        assert step in str(err), f"{where}: message does not name the step: {err}"
        assert err.leftovers == (), f"{where}: {err.leftovers}"
        after = _plans.snapshot(root_dir, host, state_dir)
        assert after == before, f"{where}: left behind:\n{_plans.diff(before, after)}"
        assert _journals(state_dir) == [], f"{where}: {_journals(state_dir)}"
        failed_calls[name] += 1
    return failed_calls


def test_every_fault_rolls_back(root_dir: str, tmp_path: Path) -> None:
    """Failing any one backend call of a 34-mount apply of every kind undoes everything.

    For each call index i of a clean run, fail call i: ExecutionError names the
    step that made the call (in ``.step`` and its text), nothing is left over,
    and the mount table, the files under the root, the host bind source and
    the state dir, and this process's open fds are exactly as before.
    """
    host, state_dir = _setup(tmp_path, root_dir)
    plan = _plans.all_kinds_plan(host)
    assert len(plan.mounts) >= 30
    n_calls = len(_trace_clean_apply(plan, compile_apply(plan), root_dir, state_dir))
    counts = _sweep(plan, root_dir, host, state_dir, range(1, n_calls + 1))
    assert sum(counts.values()) == n_calls
    # Every kind of call the engine makes in apply was failed at least once.
    assert set(counts) >= {
        "fsopen", "fsconfig_set_string", "fsconfig_create", "fsmount", "open_tree",
        "mount_setattr", "move_mount", "openat2", "mkdirat", "statx_mount_ids",
    }, counts


def test_fault_in_second_apply_keeps_the_first(root_dir: str, tmp_path: Path) -> None:
    """A failed apply of added mounts rolls back only its own changes; the committed mounts stay."""
    host, state_dir = _setup(tmp_path, root_dir)
    small = _plans.all_kinds_plan(host, overlay=False)
    first = Plan(name=small.name, roots=small.roots, mounts=small.mounts[:5])
    engine = Engine(state_dir=state_dir)
    engine.apply(first, {"r": root_dir})
    before = _plans.snapshot(root_dir, host)
    injector = FaultInjector(fail_at=1, names=frozenset({"move_mount"}))
    with pytest.raises(ExecutionError) as info:
        Engine(backend=injector, state_dir=state_dir).apply(small, {"r": root_dir})
    assert info.value.step.endswith(":move_mount") and info.value.leftovers == ()
    assert _plans.snapshot(root_dir, host) == before
    store, state = engine.load_state(first, {"r": root_dir})
    assert state is not None and [m.name for m in state.mounts] == [m.name for m in first.mounts]
    assert not os.path.exists(store.journal_path)
    engine.destroy(small, {"r": root_dir})
    assert StateStore.instances(state_dir) == []



def test_overlay_keys_the_kernel_does_not_know_are_refused_before_any_change(
    tmp_path: Path, root_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overlayfs that rejects `lowerdir+` (before 6.8): apply refuses up front naming 6.8, nothing changes.

    A syscall filter cannot emulate overlayfs's parser, so the kernel's answer to
    that one question is replaced (scaffolding; the refusal logic is what is tested).
    """
    from mountplan.engine import preflight
    from mountplan.errors import FeatureMissingError
    from mountplan.model import MountSpec, Option, RootSpec

    assert preflight.overlay_accepts("lowerdir+") is True  # this kernel (6.18) knows it
    monkeypatch.setattr(preflight, "overlay_accepts", lambda key: False)
    os.makedirs(os.path.join(root_dir, "l1"))
    os.makedirs(os.path.join(root_dir, "l2"))
    plan = Plan(name="old-ovl", roots=(RootSpec("r"),), mounts=(
        MountSpec("ovl", "r", "merged", fs_type="overlay", options=(Option("lowerdir+", "l1"), Option("lowerdir+", "l2"))),
    ))
    before = _plans.snapshot(root_dir)
    with pytest.raises(FeatureMissingError) as info:
        Engine(state_dir=str(tmp_path / "state")).apply(plan, {"r": root_dir})
    assert "6.8" in str(info.value) and "lowerdir+" in str(info.value) and info.value.exit_code == 5
    assert _plans.diff(before, _plans.snapshot(root_dir)) == ""
