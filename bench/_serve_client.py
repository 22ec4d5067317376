"""A raw worker-mode client for the bench scripts, written from docs/embedding.md, not from mountplan's code.

One JSON object per SOCK_SEQPACKET message; roots travel as fds (SCM_RIGHTS).
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
from typing import Any


def start_server(mountplan: list[str], socket_path: str, plan: str, state_dir: str, *, cwd: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``mountplan serve`` (``mountplan`` is the command that starts it), once its ready line arrived."""
    server = subprocess.Popen(
        [*mountplan, "serve", "--socket", socket_path, "--plan", plan, "--state-dir", state_dir, "--json", "-q"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=cwd,
    )
    assert server.stdout is not None
    if not select.select([server.stdout], [], [], 60)[0] or not server.stdout.readline():
        server.kill()
        server.wait()
        raise RuntimeError("mountplan serve did not become ready")
    return server


class ServeClient:
    """One connection to ``mountplan serve``."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.connect(path)

    def call(self, doc: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        payload = json.dumps(doc).encode()
        if fds:
            socket.send_fds(self.sock, [payload], fds)
        else:
            self.sock.sendmsg([payload])
        reply: dict[str, Any] = json.loads(self.sock.recv(65536))
        if not reply.get("ok"):
            raise RuntimeError(f"serve: {reply}")
        return reply

    def apply(self, fd: int) -> str:
        """Apply the served plan on the root ``fd`` (named ``input``); the action's id."""
        action: str = self.call({"format_version": 1, "op": "apply", "roots": {"input": 0}}, [fd])["action"]
        return action

    def destroy(self, action: str) -> None:
        self.call({"format_version": 1, "op": "destroy", "action": action})

    def action(self, fd: int) -> None:
        self.destroy(self.apply(fd))

    def close(self) -> None:
        self.sock.close()
