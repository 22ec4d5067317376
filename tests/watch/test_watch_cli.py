"""``mountplan watch`` as a process: JSON lines on stdout, the mechanism first, a clean exit on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _watching import MECHANISMS, PROMPT, require, sh

from mountplan.watch import Mechanism

pytestmark = pytest.mark.mountns

PLAN_YAML = """\
version: 1
name: watched
roots:
  r: {}
mounts:
  - name: tmp
    target: tmp
    type: tmpfs
    options: {size: 4M}
    attrs: [nosuid]
"""


@pytest.fixture
def plan_file(tmp_path: Path) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN_YAML)
    return str(path)


class Cli:
    """``mountplan ARGV`` in a forked child of this (sandboxed) process, stdout on a pipe.

    Forked, not exec'd: the CLI's own code path (argument parsing, signal
    handling, exit status) runs unchanged, and no interpreter has to be
    executable from inside the user namespace of an unprivileged run.
    """

    def __init__(self, *argv: str) -> None:
        read_fd, write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: become `mountplan ARGV`
            code = 1
            try:
                os.close(read_fd)
                os.dup2(write_fd, 1)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives until _exit
                from mountplan.cli import main

                code = main(list(argv))
            finally:
                sys.stdout.flush()
                os._exit(code)
        os.close(write_fd)
        self.fd = read_fd
        self.buffer = b""

    def next(self, timeout: float = PROMPT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no line from mountplan watch within {timeout}s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"mountplan watch exited with {self.wait()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def until(self, event: str) -> dict[str, Any]:
        while True:
            doc = self.next()
            if doc["event"] == event:
                return doc

    def wait(self, timeout: float = PROMPT) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("mountplan watch did not exit")


def _watch(plan_file: str, root: str, state: str, *extra: str) -> Cli:
    return Cli("watch", plan_file, "--root", f"r={root}", "--state-dir", state, "--json", *extra)


def _apply(plan_file: str, root: str, state: str) -> None:
    assert Cli("apply", plan_file, "--root", f"r={root}", "--state-dir", state).wait() == 0


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_json_lines_name_the_mechanism_then_report_drift(
    tmp_path: Path, root_dir: str, plan_file: str, mechanism: Mechanism
) -> None:
    """The first line names the mechanism; an unmount gives a drift line; SIGTERM ends it with 'stopped', exit 0."""
    require(mechanism)
    state = str(tmp_path / "s")
    _apply(plan_file, root_dir, state)
    flag = "fanotify" if mechanism is Mechanism.FANOTIFY else "mountinfo"
    lines = _watch(plan_file, root_dir, state, "--mechanism", flag)
    try:
        first = lines.next()
        assert (first["event"], first["mechanism"], first["format_version"]) == ("watching", mechanism.value, 1)
        assert lines.next()["event"] == "in-sync"
        sh("umount", f"{root_dir}/tmp")
        drift = lines.until("drift")
        assert [c["action"] for c in drift["changes"]["changes"]] == ["create"]
        assert drift["changes"]["changes"][0]["reason"]
    finally:
        os.kill(lines.pid, signal.SIGTERM)
    assert lines.wait() == 0
    assert lines.until("stopped")["event"] == "stopped"


def test_reconcile_repairs_and_sigint_exits_cleanly(tmp_path: Path, root_dir: str, plan_file: str) -> None:
    """--reconcile re-makes an unmounted tmpfs; SIGINT (Ctrl-C) exits 0 with no traceback."""
    state = str(tmp_path / "s")
    _apply(plan_file, root_dir, state)
    lines = _watch(plan_file, root_dir, state, "--reconcile")
    try:
        lines.until("in-sync")
        sh("umount", f"{root_dir}/tmp")
        lines.until("drift")
        assert lines.until("reconciled")["created"] == ["tmp"]
        lines.until("in-sync")
        assert os.path.ismount(f"{root_dir}/tmp")
    finally:
        os.kill(lines.pid, signal.SIGINT)
    assert lines.wait() == 0  # not 130: SIGINT is a request to stop, not an interruption


def test_a_zero_rate_limit_window_is_a_usage_error(root_dir: str, plan_file: str) -> None:
    """--window 0 would disable the rate limit: refused as a usage error (exit 2) before anything is watched."""
    assert Cli("watch", plan_file, "--root", f"r={root_dir}", "--window", "0").wait() == 2


def _rest(cli: Cli) -> list[str]:
    """Every line the (exited) process wrote that ``next`` has not read."""
    data = cli.buffer
    while chunk := os.read(cli.fd, 65536):
        data += chunk
    return data.decode().splitlines()


def _a_file(tmp_path: Path) -> str:
    (tmp_path / "file").write_text("")
    return str(tmp_path / "file")


#: A bad start: the --root argument, the --state-dir, and the error `plan` reports for the same arguments.
BAD_STARTS = [
    pytest.param(lambda t, r: f"r={t}/nonexistent", lambda t: f"{t}/s", "RootError", id="missing-root"),
    pytest.param(lambda t, r: f"r={_a_file(t)}", lambda t: f"{t}/s", "RootError", id="root-not-a-directory"),
    pytest.param(lambda t, r: f"nope={r}", lambda t: f"{t}/s", "RootError", id="unknown-root-name"),
    pytest.param(lambda t, r: f"r={r}", _a_file, "StateError", id="state-dir-a-file"),
]


@pytest.mark.parametrize(("root_arg", "state_arg", "kind"), BAD_STARTS)
def test_a_root_or_state_error_at_start_exits_as_plan_does(
    tmp_path: Path, root_dir: str, plan_file: str, root_arg: Any, state_arg: Any, kind: str
) -> None:
    """docs/watch.md: root and state errors at start exit with plan's code, at once, not retried;
    under --json the only line is the error document, on one line (JSON lines stay JSON lines)."""
    args = ("--root", root_arg(tmp_path, root_dir), "--state-dir", state_arg(tmp_path), "--json")
    planned = Cli("plan", plan_file, *args)
    plan_code = planned.wait()
    assert plan_code in {3, 7}
    watched = Cli("watch", plan_file, *args)
    assert watched.wait() == plan_code
    (line,) = _rest(watched)
    doc = json.loads(line)
    assert (doc["error"], doc["code"], doc["format_version"]) == (kind, plan_code, 1)


def test_a_missing_root_at_start_exits_3_in_text_mode_too(tmp_path: Path, plan_file: str) -> None:
    """Without --json: exit 3 at once, and no 'watching' line claims a watch that never ran."""
    watched = Cli("watch", plan_file, "--root", f"r={tmp_path}/nonexistent", "--state-dir", str(tmp_path / "s"))
    assert watched.wait() == 3
    assert _rest(watched) == []
