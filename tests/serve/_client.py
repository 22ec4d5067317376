"""A worker-mode client written from docs/embedding.md alone, with raw sockets: no code of mountplan.serve.

One JSON object per SOCK_SEQPACKET message; root fds ride on the request as
SCM_RIGHTS, named by their index in ``"roots"``.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

#: Every test bounds each wait on the server by this many seconds.
TIMEOUT = 15.0
MAX_MESSAGE = 65536


def connect(path: str) -> socket.socket:
    """A connection to the server listening on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    return sock


def send(sock: socket.socket, payload: bytes, fds: list[int] | None = None) -> None:
    """Send one message, with ``fds`` attached as SCM_RIGHTS."""
    if fds:
        socket.send_fds(sock, [payload], fds)
    else:
        sock.sendmsg([payload])


def receive(sock: socket.socket) -> dict[str, Any]:
    """The next reply, decoded; fails on end of file or a reply that does not fit one message."""
    data, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE)
    assert data, "the server closed the connection"
    assert not ancillary and not flags & socket.MSG_TRUNC
    doc: dict[str, Any] = json.loads(data)
    return doc


def request(sock: socket.socket, doc: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
    """Send ``doc`` (as JSON) with ``fds`` and return the reply."""
    send(sock, json.dumps(doc).encode(), fds)
    return receive(sock)


def apply(sock: socket.socket, root: str, *, request_id: object = None) -> dict[str, Any]:
    """Apply the plan beneath the directory ``root`` (opened O_PATH here, closed after sending)."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        doc: dict[str, Any] = {"format_version": 1, "op": "apply", "roots": {"input": 0}}
        if request_id is not None:
            doc["id"] = request_id
        return request(sock, doc, [fd])
    finally:
        os.close(fd)  # the server holds its own copy


def destroy(sock: socket.socket, action: str) -> dict[str, Any]:
    """Destroy the action ``action`` applied on this connection."""
    return request(sock, {"format_version": 1, "op": "destroy", "action": action})
