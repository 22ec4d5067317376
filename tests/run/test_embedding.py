"""Embedding: fd roots stay the caller's, applied() destroys on error, the documented examples run."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

import mountplan
from mountplan import runner
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

DOC = Path(__file__).parents[2] / "docs" / "embedding.md"


def doc_python_blocks() -> list[str]:
    """The ```python blocks of docs/embedding.md, in order."""
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def mounts_under(path: str) -> list[str]:
    """Mount points (field 5 of mountinfo) at or below ``path``."""
    return [line.split()[4] for line in mount_table_snapshot() if line.split()[4].startswith(path + "/")]


def test_fd_root_is_used_and_left_open(build_action: mountplan.Plan, userland: str, state_dir: str) -> None:
    """An O_PATH directory fd works as a root; after applied() it is still open and the same dir."""
    before = mount_table_snapshot()
    fd = os.open(userland, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with mountplan.applied(build_action, roots={"input": fd}, state_dir=state_dir) as result:
            assert set(result.created) == {m.name for m in build_action.mounts} | {o.name for o in build_action.objects}
            assert f"{userland}/opt/tools" in mounts_under(userland)
        st = os.fstat(fd)
        assert (st.st_dev, st.st_ino) == (os.stat(userland).st_dev, os.stat(userland).st_ino)
    finally:
        os.close(fd)
    assert mount_table_snapshot() == before
    assert sorted(os.listdir(userland)) == ["bin", "toolchain"]


def test_body_that_raises_still_destroys(build_action: mountplan.Plan, userland: str, state_dir: str) -> None:
    """An exception in the with-body propagates unchanged and every mount and mountpoint is gone."""
    before = mount_table_snapshot()
    with (
        pytest.raises(RuntimeError, match="action crashed"),
        mountplan.applied(build_action, roots={"input": userland}, state_dir=state_dir),
    ):
        assert mounts_under(userland)
        raise RuntimeError("action crashed")
    assert mount_table_snapshot() == before
    assert sorted(os.listdir(userland)) == ["bin", "toolchain"]


def test_runner_chroots_into_an_fd_root_by_name(build_action: mountplan.Plan, userland: str, state_dir: str) -> None:
    """run(chroot=ROOTNAME) with the root given as an fd chroots there; the fd stays open."""
    fd = os.open(userland, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        code = runner.run(
            build_action, {"input": fd}, ["/bin/sh", "-c", "[ -f /opt/tools/tool ] && echo in > /marker"],
            chroot="input", state_dir=state_dir,
        )
        assert code == 0
        os.fstat(fd)
    finally:
        os.close(fd)
    assert Path(userland, "marker").read_text() == "in\n"


def test_documented_worker_runs_an_action(userland: str, state_dir: str) -> None:
    """The build-worker example in docs/embedding.md runs an action chrooted and deletes its tree."""
    before = mount_table_snapshot()
    os.chdir(DOC.parents[1])  # the example loads plans/ relative to the repository
    namespace: dict[str, Any] = {"__name__": "worker_example"}
    exec(compile(doc_python_blocks()[0], str(DOC), "exec"), namespace)  # noqa: S102 - the documented code itself
    statuses = namespace["worker"](
        [(userland, ["/bin/sh", "-c", "grep -q ^Pid /proc/self/status && echo x > /tmp/x && exit 7"])],
        state_dir=state_dir,
    )
    assert statuses == [7]
    assert not os.path.exists(userland)
    assert mount_table_snapshot() == before


def test_documented_logging_setup_routes_events(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """The logging example in docs/embedding.md writes mountplan's events as JSON lines."""
    os.chdir(tmp_path)  # the example writes mountplan-events.jsonl in the current directory
    logging_block = next(block for block in doc_python_blocks() if "mountplan-events.jsonl" in block)
    # Runs in the sandbox child: the global structlog configuration dies with it.
    exec(compile(logging_block, str(DOC), "exec"), {"__name__": "logging_example"})  # noqa: S102 - the documented code
    mountplan.apply(small_plan, {"input": root_dir}, state_dir=state_dir)
    mountplan.destroy(small_plan, {"input": root_dir}, state_dir=state_dir)
    events = [json.loads(line) for line in (tmp_path / "mountplan-events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert "apply.done" in names and "mount.removed" in names
    assert all(e["level"] in {"info", "warning", "error", "debug"} for e in events)
