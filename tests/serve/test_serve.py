"""Worker mode on the real kernel, driven by a raw-socket client written from docs/embedding.md."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from _client import apply, connect, destroy, receive, request, send
from _serving import eventually, mount_points, mounted, serving

pytestmark = pytest.mark.mountns

PLANNED = {"scratch", "scratch/inner"}


def test_apply_mounts_beneath_the_root_fd_before_replying(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """The apply reply arrives after the plan's mounts exist beneath the passed fd's directory."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        reply = apply(sock, roots[0], request_id={"job": 7})
        assert mounted(roots[0]) == PLANNED  # already there when the reply is read
        assert reply["ok"] is True and reply["format_version"] == 1 and reply["op"] == "apply"
        assert reply["id"] == {"job": 7}
        assert isinstance(reply["action"], str) and reply["plan"] == "serve-test"
        assert sorted(reply["created"]) == ["inner", "scratch"]
        assert reply["summary"] == {"created": 2, "updated": 0, "replaced": 0, "unchanged": 0}
        assert stat.S_IMODE(os.stat(Path(roots[0], "scratch", "inner")).st_mode) == 0o700


def test_the_fd_not_the_path_decides_where_mounts_go(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """A root renamed after its fd was opened gets the mounts in its new place; nothing appears at the old path."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        fd = os.open(roots[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        moved = roots[0] + ".moved"
        os.rename(roots[0], moved)
        os.mkdir(roots[0])  # an impostor at the old path
        try:
            reply = request(sock, {"format_version": 1, "op": "apply", "roots": {"input": 0}}, [fd])
        finally:
            os.close(fd)
        assert reply["ok"] is True, reply
        assert mounted(moved) == PLANNED
        assert mounted(roots[0]) == set()


def test_destroy_unmounts_and_removes_mountpoints(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """A destroy request unmounts everything the apply made and removes the mountpoints it created."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        action = apply(sock, roots[0])["action"]
        reply = destroy(sock, action)
        assert reply == {"format_version": 1, "ok": True, "op": "destroy", "action": action}
        assert mounted(roots[0]) == set()
        assert os.listdir(roots[0]) == []
        # The connection stays usable: the same root can be applied again.
        again = apply(sock, roots[0])
        assert again["ok"] is True and again["action"] != action
        assert mounted(roots[0]) == PLANNED


def test_disconnect_without_destroy_tears_down(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """A client that closes its connection without destroy gets its mounts removed."""
    with serving(plan_path, socket_path, state_dir):
        with connect(socket_path) as sock:
            assert apply(sock, roots[0])["ok"] is True
            assert mounted(roots[0]) == PLANNED
        eventually(lambda: mounted(roots[0]) == set(), "teardown after the disconnect")
        assert os.listdir(roots[0]) == []


def test_killed_client_gets_torn_down(plan_path: str, roots: list[str], socket_path: str, state_dir: str) -> None:
    """A client process killed with SIGKILL while holding an action: the kernel closes its socket, the server destroys."""
    with serving(plan_path, socket_path, state_dir):
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the client: apply, report, then wait to be killed
            try:
                os.close(ready_read)
                sock = connect(socket_path)
                reply = apply(sock, roots[0])
                os.write(ready_write, b"1" if reply["ok"] else b"0")
                signal.pause()
            finally:
                os._exit(1)
        os.close(ready_write)
        try:
            assert os.read(ready_read, 1) == b"1"
            assert mounted(roots[0]) == PLANNED
        finally:
            os.close(ready_read)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        eventually(lambda: mounted(roots[0]) == set(), "teardown after the client was killed")


def _pipe_fd() -> int:
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


# (id, request bytes or a JSON document, how many fds to attach (-1: a pipe instead of the root), expected code)
BAD_REQUESTS: list[tuple[str, Any, int, int]] = [
    ("not-json", b"{apply", 0, 2),
    ("not-utf8", b"\xff\xfe", 0, 2),
    ("json-array", [], 0, 2),
    ("no-format-version", {"op": "ping"}, 0, 2),
    ("future-format-version", {"format_version": 2, "op": "ping"}, 0, 2),
    ("unknown-op", {"format_version": 1, "op": "mount-everything"}, 0, 2),
    ("apply-without-roots", {"format_version": 1, "op": "apply"}, 1, 2),
    ("apply-index-out-of-range", {"format_version": 1, "op": "apply", "roots": {"input": 1}}, 1, 2),
    ("apply-index-not-int", {"format_version": 1, "op": "apply", "roots": {"input": "0"}}, 1, 2),
    ("apply-unused-fd", {"format_version": 1, "op": "apply", "roots": {"input": 0}}, 2, 2),
    ("apply-no-fd", {"format_version": 1, "op": "apply", "roots": {"input": 0}}, 0, 2),
    ("apply-unknown-root", {"format_version": 1, "op": "apply", "roots": {"input": 0, "other": 0}}, 1, 3),
    ("apply-root-not-a-directory", {"format_version": 1, "op": "apply", "roots": {"input": 0}}, -1, 3),
    ("destroy-unknown-action", {"format_version": 1, "op": "destroy", "action": "1.1"}, 0, 2),
    ("destroy-with-fd", {"format_version": 1, "op": "destroy", "action": "1.1"}, 1, 2),
    ("ping-with-fd", {"format_version": 1, "op": "ping"}, 1, 2),
]


@pytest.mark.parametrize(("payload", "fd_count", "code"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_an_error_and_changes_nothing(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str, payload: Any, fd_count: int, code: int
) -> None:
    """A bad request gets ``ok: false`` with the CLI's exit code; no mount changes; the connection stays usable."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        before = mount_points()
        fds = [_pipe_fd()] if fd_count < 0 else [os.open(roots[0], os.O_PATH | os.O_DIRECTORY) for _ in range(fd_count)]
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            send(sock, data, fds)
        finally:
            for fd in fds:
                os.close(fd)
        reply = receive(sock)
        assert reply["ok"] is False and reply["format_version"] == 1
        assert reply["error"]["code"] == code, reply
        assert isinstance(reply["error"]["type"], str) and reply["error"]["message"]
        assert mount_points() == before
        assert os.listdir(roots[0]) == []
        assert request(sock, {"format_version": 1, "op": "ping"})["ok"] is True


def test_oversized_request_is_refused(plan_path: str, roots: list[str], socket_path: str, state_dir: str) -> None:
    """A request longer than 65536 bytes is refused with code 2, not read in part and acted on."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        doc = {"format_version": 1, "op": "ping", "padding": "x" * 70000}
        reply = request(sock, doc)
        assert reply["ok"] is False and reply["error"]["code"] == 2
        assert "65536" in reply["error"]["message"]


def test_two_clients_at_once_with_different_roots(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """Two connections apply at the same moment, each beneath its own root; each destroy removes only its own."""
    with serving(plan_path, socket_path, state_dir):
        barrier = threading.Barrier(2, timeout=15)
        replies: dict[int, dict[str, Any]] = {}
        socks = [connect(socket_path), connect(socket_path)]

        def client(index: int) -> None:
            barrier.wait()
            replies[index] = apply(socks[index], roots[index])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
            assert not thread.is_alive()
        try:
            assert replies[0]["ok"] is True and replies[1]["ok"] is True, replies
            assert mounted(roots[0]) == PLANNED and mounted(roots[1]) == PLANNED
            assert replies[0]["state_file"] != replies[1]["state_file"]  # two plan instances
            assert destroy(socks[0], replies[0]["action"])["ok"] is True
            assert mounted(roots[0]) == set() and mounted(roots[1]) == PLANNED
        finally:
            for sock in socks:
                sock.close()
        eventually(lambda: mounted(roots[1]) == set(), "the second client's teardown")


def test_same_root_twice_is_refused_and_the_holder_keeps_its_mounts(
    plan_path: str, roots: list[str], socket_path: str, state_dir: str
) -> None:
    """One root = one plan instance: a second apply on it (other connection) gets code 6 at once and changes nothing."""
    with serving(plan_path, socket_path, state_dir), connect(socket_path) as first, connect(socket_path) as second:
        held = apply(first, roots[0])
        assert held["ok"] is True
        refused = apply(second, roots[0])
        assert refused["ok"] is False and refused["error"]["code"] == 6
        assert held["action"] in refused["error"]["message"]
        second.close()
        assert request(first, {"format_version": 1, "op": "ping"})["ok"] is True
        assert mounted(roots[0]) == PLANNED
        assert destroy(first, held["action"])["ok"] is True


def test_socket_is_private_to_the_owner(plan_path: str, socket_path: str, state_dir: str) -> None:
    """The socket is created mode 0600: a client picks where the plan's mounts go."""
    with serving(plan_path, socket_path, state_dir):
        assert stat.S_IMODE(os.lstat(socket_path).st_mode) == 0o600
    assert not os.path.exists(socket_path)  # removed on stop
