"""``mountplan serve`` as a process: ready line, requests from a raw client, SIGTERM tears down every action."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from _client import TIMEOUT, apply, connect, request
from _serving import TEST_BOUND, eventually, mounted

pytestmark = pytest.mark.mountns

PLANNED = {"scratch", "scratch/inner"}


def _mountplan(*args: str) -> list[str]:
    return [sys.executable, "-m", "mountplan", *args]


@contextmanager
def serve_process(plan_path: str, socket_path: str, state_dir: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    """``mountplan serve --json`` in this sandbox; yields the process and its ready line, decoded."""
    signal.alarm(TEST_BOUND)
    proc = subprocess.Popen(
        _mountplan("serve", "--socket", socket_path, "--plan", plan_path, "--state-dir", state_dir, "--json", "-q"),
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, "no ready line"
        yield proc, json.loads(proc.stdout.readline())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)


def test_ready_line_then_sigterm_destroys_live_actions(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """The JSON ready line comes once the socket accepts; SIGTERM destroys live actions, removes the socket, exits 0."""
    with serve_process(plan_path, socket_path, state_dir) as (proc, line):
        assert line == {"event": "listening", "format_version": 1, "plan": "serve-test", "socket": socket_path,
                        "pid": proc.pid}
        sock = connect(socket_path)
        try:
            assert apply(sock, roots[0])["ok"] is True
            assert mounted(roots[0]) == PLANNED
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT) == 0
        finally:
            sock.close()
        assert mounted(roots[0]) == set()
        assert not os.path.exists(socket_path)


def test_action_holds_its_instance_against_other_mountplans(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """While an action lives, `mountplan destroy` on the same plan and root cannot take its mounts (exit 6)."""
    with serve_process(plan_path, socket_path, state_dir):
        sock = connect(socket_path)
        assert apply(sock, roots[0])["ok"] is True
        other = subprocess.run(
            _mountplan("destroy", plan_path, "--root", f"input={roots[0]}", "--state-dir", state_dir,
                       "--lock-timeout", "0", "-q"),
            check=False, capture_output=True, text=True, timeout=TIMEOUT,
        )
        assert other.returncode == 6, other.stderr
        assert mounted(roots[0]) == PLANNED
        assert request(sock, {"format_version": 1, "op": "ping"})["ok"] is True
        sock.close()
        eventually(lambda: mounted(roots[0]) == set(), "teardown after the disconnect")


def test_second_server_on_a_live_socket_is_refused(plan_path: str, socket_path: str, state_dir: str) -> None:
    """A second `serve` on a socket another server listens on exits 6 and leaves the first one serving."""
    with serve_process(plan_path, socket_path, state_dir):
        second = subprocess.run(
            _mountplan("serve", "--socket", socket_path, "--plan", plan_path, "--state-dir", state_dir, "-q"),
            check=False, capture_output=True, text=True, timeout=TIMEOUT,
        )
        assert second.returncode == 6, second.stderr
        with connect(socket_path) as sock:
            assert request(sock, {"format_version": 1, "op": "ping"})["ok"] is True


def test_killed_server_leaves_a_journal_the_next_server_finishes(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """SIGKILL of the server keeps its mounts; a new server replaces the dead socket; the next apply there recovers them."""
    with serve_process(plan_path, socket_path, state_dir) as (proc, _), connect(socket_path) as sock:
        assert apply(sock, roots[0])["ok"] is True
        proc.kill()
        proc.wait(TIMEOUT)
    assert mounted(roots[0]) == PLANNED  # nothing ran to remove them
    assert os.path.exists(socket_path)  # nor the socket
    with serve_process(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        again = apply(sock, roots[0])
        assert again["ok"] is True, again
        assert sorted(again["created"]) == ["inner", "scratch"]  # the dead session's mounts were destroyed first
        assert mounted(roots[0]) == PLANNED
        assert request(sock, {"format_version": 1, "op": "destroy", "action": again["action"]})["ok"] is True
        assert mounted(roots[0]) == set()


def test_socket_path_that_is_not_a_socket_is_a_usage_error(plan_path: str, socket_path: str, state_dir: str) -> None:
    """`serve --socket FILE` on a regular file exits 2 and leaves the file alone."""
    signal.alarm(TEST_BOUND)
    with open(socket_path, "w") as file:
        file.write("keep me\n")
    done = subprocess.run(
        _mountplan("serve", "--socket", socket_path, "--plan", plan_path, "--state-dir", state_dir),
        check=False, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 2, done.stderr
    assert "not a socket" in done.stderr
    with open(socket_path) as file:
        assert file.read() == "keep me\n"
