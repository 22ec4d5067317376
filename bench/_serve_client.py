"""A raw worker-mode client for the bench scripts, written from docs/embedding.md, not from mountplan's code.

One JSON object per SOCK_SEQPACKET message; roots travel as fds (SCM_RIGHTS).
"""

from __future__ import annotations

import json
import socket
from typing import Any


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
