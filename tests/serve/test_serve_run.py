"""The worker mode's ``run`` request on the real kernel: a whole sandboxed action per request.

Driven by the raw-socket client written from docs/embedding.md (``_client.py``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from _client import connect, request, send
from _serving import eventually, mount_points, mounted, serving

from mountplan import serve_run

pytestmark = pytest.mark.mountns


def _run(sock: Any, root: str, argv: list[str], stdio: list[int | None] | None = None,
         **fields: Any) -> dict[str, Any]:
    """Send a run request with ``root`` as fd 0 and ``stdio`` (fds, None for /dev/null) after it."""
    fds = [os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    indexes: list[int | None] = []
    for fd in stdio or [None, None, None]:
        if fd is None:
            indexes.append(None)
        else:
            fds.append(fd)
            indexes.append(len(fds) - 1)
    try:
        doc = {"format_version": 1, "op": "run", "roots": {"input": 0}, "argv": argv, "stdio": indexes, **fields}
        return request(sock, doc, fds)
    finally:
        os.close(fds[0])


def _read_all(fd: int) -> str:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    os.close(fd)
    return data.decode()


def test_run_executes_the_command_in_its_sandbox_and_tears_down(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """The command sees the plan's mounts in new namespaces; the reply comes after destroy, with its status."""
    out_read, out_write = os.pipe()
    script = "cat /proc/self/mountinfo; echo net=$(readlink /proc/self/ns/net); echo pid=$$"
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        before = mount_points()
        reply = _run(sock, roots[0], ["/bin/sh", "-c", script], [None, out_write, None], id="job-1")
        os.close(out_write)
        output = _read_all(out_read)
        assert reply == {"format_version": 1, "id": "job-1", "ok": True, "op": "run", "status": 0}, reply
        seen = {line.split()[4] for line in output.splitlines() if line[:1].isdigit()}
        assert {f"{roots[0]}/scratch", f"{roots[0]}/scratch/inner"} <= seen
        assert f"net={os.readlink('/proc/self/ns/net')}" not in output  # a net namespace of its own
        assert "pid=2\n" in output  # pid 2 of its own pid namespace (mountplan is pid 1)
        assert mount_points() == before  # never mounted in the server's namespace
        assert os.listdir(roots[0]) == []  # the mountpoints it created are gone


@pytest.mark.parametrize(("argv", "status"), [
    (["/bin/sh", "-c", "exit 7"], 7),
    (["/bin/sh", "-c", "kill -9 $$"], 128 + 9),
    (["/nonexistent/command"], 127),
])
def test_run_relays_the_exit_status(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str, argv: list[str], status: int
) -> None:
    """Exit status as a shell gives it; a missing command's message goes to the client's stderr."""
    err_read, err_write = os.pipe()
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        reply = _run(sock, roots[0], argv, [None, None, err_write])
        os.close(err_write)
        errors = _read_all(err_read)
        assert reply["ok"] is True and reply["status"] == status, reply
        if status == 127:
            assert "command not found" in errors
        assert mounted(roots[0]) == set() and os.listdir(roots[0]) == []


def test_missing_stdio_is_dev_null(plan_path: str, roots: list[str], socket_path: str, state_dir: str) -> None:
    """stdin and stderr left out are /dev/null, never the server's own."""
    out_read, out_write = os.pipe()
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        reply = _run(sock, roots[0], ["readlink", "/proc/self/fd/0", "/proc/self/fd/2"], [None, out_write, None])
        os.close(out_write)
        assert reply["status"] == 0, reply
        assert _read_all(out_read).split() == ["/dev/null", "/dev/null"]


def _client_process(socket_path: str, doc: dict[str, Any], fds: list[int], reply_fd: int,
                    *, half_close: bool = False) -> int:
    """Fork a client that sends ``doc`` with ``fds`` and writes the reply it gets to ``reply_fd``."""
    pid = os.fork()
    if pid == 0:
        try:
            sock = connect(socket_path)
            sock.settimeout(None)
            send(sock, json.dumps(doc).encode(), fds)
            if half_close:
                sock.shutdown(socket.SHUT_WR)  # done sending, still reading
            os.write(reply_fd, sock.recv(65536))
        finally:
            os._exit(0)
    return pid


def _kill_a_client_mid_run(socket_path: str, root: str, script: str, **fields: Any) -> int:
    """A client process runs ``script`` (which prints ``ready``) and is SIGKILLed once it did; the command's stdout."""
    out_read, out_write = os.pipe()
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    doc = {"format_version": 1, "op": "run", "roots": {"input": 0}, "stdio": [None, 1, None],
           "argv": ["/bin/sh", "-c", script], **fields}
    client = _client_process(socket_path, doc, [root_fd, out_write], out_write)
    os.close(root_fd)
    os.close(out_write)
    assert os.read(out_read, 6) == b"ready\n"
    os.kill(client, signal.SIGKILL)  # the kernel closes its connection
    os.waitpid(client, 0)
    return out_read


def test_client_hangup_stops_the_command_and_tears_down(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """A client killed mid-run: the command is stopped, the mounts and mountpoints go, the server lives on."""
    with serving(plan_path, socket_path, state_dir):
        out_read = _kill_a_client_mid_run(socket_path, roots[0], "echo ready; exec sleep 1000")
        # The pipe ends when the last writer, the sleeping command, is gone.
        assert _read_all(out_read) == ""
        eventually(lambda: os.listdir(roots[0]) == [], "the run's teardown after the hang-up")
        with connect(socket_path) as other:
            assert request(other, {"format_version": 1, "op": "ping"})["ok"] is True
            assert _run(other, roots[0], ["true"])["status"] == 0  # the root is free again


def test_half_closed_client_still_gets_its_reply(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """shutdown(SHUT_WR) after the request is not a hang-up: the run goes on and the reply arrives."""
    reply_read, reply_write = os.pipe()
    with serving(plan_path, socket_path, state_dir):
        root = os.open(roots[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        doc = {"format_version": 1, "op": "run", "roots": {"input": 0}, "argv": ["/bin/sh", "-c", "sleep 0.3; exit 5"]}
        client = _client_process(socket_path, doc, [root], reply_write, half_close=True)
        os.close(root)
        os.close(reply_write)
        reply = _read_all(reply_read)
        os.waitpid(client, 0)
    assert json.loads(reply).get("status") == 5, reply


def test_a_command_ignoring_sigterm_dies_with_the_run_without_unshare(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """unshare false, client gone, the command ignores SIGTERM: the SIGKILL after the grace reaches it too."""
    monkeypatch.setattr(serve_run, "RUN_GRACE", 0.5)
    with serving(plan_path, socket_path, state_dir):
        out_read = _kill_a_client_mid_run(socket_path, roots[0], "trap '' TERM; echo ready; exec sleep 30",
                                          unshare=False)
        started = time.monotonic()
        assert _read_all(out_read) == ""  # every writer gone: the command too
        assert time.monotonic() - started < 10


def test_the_server_log_gets_the_runs_events(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str, tmp_path: Path
) -> None:
    """An embedder's log file keeps receiving mountplan's events from a run's child, and nothing else does."""
    log_path = tmp_path / "server.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mountplan")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
            reply = _run(sock, roots[0], ["true"])
            assert reply["ok"] is True and reply["status"] == 0, reply
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
    text = log_path.read_text()
    assert "run.started" in text and "serve.ran" in text, text
    for name in os.listdir(state_dir):
        assert b"run.started" not in Path(state_dir, name).read_bytes(), name


def test_run_on_a_root_an_action_holds_is_refused(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """A root held by an apply of this server: run gets code 6 at once and the holder keeps its mounts."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as first, connect(socket_path) as second:
        fd = os.open(roots[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            held = request(first, {"format_version": 1, "op": "apply", "roots": {"input": 0}}, [fd])
        finally:
            os.close(fd)
        assert held["ok"] is True
        refused = _run(second, roots[0], ["true"])
        assert refused["ok"] is False and refused["error"]["code"] == 6, refused
        assert held["action"] in refused["error"]["message"]
        assert mounted(roots[0]) == {"scratch", "scratch/inner"}


BAD_RUNS: list[tuple[str, dict[str, Any]]] = [
    ("no-argv", {}),
    ("empty-argv", {"argv": []}),
    ("argv-not-strings", {"argv": ["true", 1]}),
    ("stdio-too-short", {"argv": ["true"], "stdio": [None]}),
    ("stdio-index-out-of-range", {"argv": ["true"], "stdio": [None, 5, None]}),
    ("unshare-unknown-namespace", {"argv": ["true"], "unshare": ["time"]}),
    ("unshare-not-a-list", {"argv": ["true"], "unshare": "net"}),
    ("env-not-strings", {"argv": ["true"], "env": {"A": 1}}),
    ("cwd-not-a-string", {"argv": ["true"], "cwd": 5}),
]


@pytest.mark.parametrize("fields", [c[1] for c in BAD_RUNS], ids=[c[0] for c in BAD_RUNS])
def test_bad_run_request_gets_code_2_and_runs_nothing(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str, fields: dict[str, Any]
) -> None:
    """A malformed run request is refused before anything forks or mounts."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        before = mount_points()
        fd = os.open(roots[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            reply = request(sock, {"format_version": 1, "op": "run", "roots": {"input": 0}, **fields}, [fd])
        finally:
            os.close(fd)
        assert reply["ok"] is False and reply["error"]["code"] == 2, reply
        assert mount_points() == before and os.listdir(roots[0]) == []


def test_unused_fd_in_a_run_is_refused(plan_path: str, roots: list[str], socket_path: str, state_dir: str) -> None:
    """Every attached fd must be a root or a stdio entry."""
    read_end, write_end = os.pipe()
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        fd = os.open(roots[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            reply = request(sock, {"format_version": 1, "op": "run", "roots": {"input": 0}, "argv": ["true"]},
                            [fd, write_end])
        finally:
            os.close(fd)
            os.close(write_end)
        os.close(read_end)
        assert reply["ok"] is False and reply["error"]["code"] == 2 and "[1]" in reply["error"]["message"], reply



def test_the_documented_run_exchange(plan_path: str, roots: list[str], socket_path: str, state_dir: str) -> None:
    """docs/embedding.md's `run` example: its request, sent as written, gets exactly its reply."""
    text = (Path(__file__).parents[2] / "docs" / "embedding.md").read_text()
    section = text.split("### `run`: the whole sandbox per request", 1)[1]
    block = section.split("```json\n", 1)[1].split("```", 1)[0]
    sent, expected = block.strip().splitlines()
    out_read, out_write = os.pipe()
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        root = os.open(roots[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            send(sock, sent.encode(), [root, out_write, out_write])
        finally:
            os.close(root)
            os.close(out_write)
        assert sock.recv(65536).decode() == expected
    os.close(out_read)


@pytest.mark.parametrize("unshare", [True, False], ids=["unshare", "no-unshare"])
def test_the_command_gets_only_its_stdio(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str, tmp_path: Path, unshare: bool
) -> None:
    """No fd of the server (an inherited host file, the root fd, the request's copies) reaches the command."""
    host = tmp_path / "host-file"
    host.write_text("")
    inherited = os.open(host, os.O_WRONLY | os.O_APPEND)  # as a service manager or a shell hands one down
    os.set_inheritable(inherited, True)
    out_read, out_write = os.pipe()
    try:
        with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
            reply = _run(sock, roots[0], ["/bin/sh", "-c", f"ls /proc/self/fd; echo escaped >&{inherited}"],
                         [None, out_write, None], unshare=unshare)
            os.close(out_write)
            listed = _read_all(out_read).split()
    finally:
        os.close(inherited)
    assert reply["ok"] is True, reply
    assert host.read_text() == ""
    # 0-2, and the directory ls reads /proc/self/fd through.
    assert len([fd for fd in listed if int(fd) > 2]) <= 1, listed


def test_a_failed_fork_is_an_execution_error_and_leaks_nothing(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fork(2) refused (EAGAIN at a task limit): code 4, the report pipe closed, the server serves on."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        _run(sock, roots[0], ["true"])  # warm: whatever the first run opens for good is open now
        before = sorted(os.listdir("/proc/self/fd"))

        def refuse() -> int:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

        with monkeypatch.context() as patch:
            patch.setattr(serve_run.os, "fork", refuse)
            reply = _run(sock, roots[0], ["true"])
        assert reply["ok"] is False and reply["error"]["code"] == 4, reply
        assert "fork: EAGAIN" in reply["error"]["message"], reply
        assert sorted(os.listdir("/proc/self/fd")) == before
        assert _run(sock, roots[0], ["true"])["status"] == 0
