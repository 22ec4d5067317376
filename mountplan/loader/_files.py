"""Reading a plan file: a regular file only, never a hang on a FIFO or a device."""

from __future__ import annotations

import os
import stat

__all__ = ["UnreadableFileError", "read_regular_file"]


class UnreadableFileError(Exception):
    """The file cannot be read as a plan; ``str()`` says why, without the path."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def read_regular_file(path: str, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the regular file at ``path`` (one more than ``limit`` tells it is too big).

    The file is opened with ``O_NONBLOCK``: opening a FIFO for reading otherwise
    waits for a writer forever, and reading a terminal or ``/dev/zero`` never
    ends. Its type is checked on the open fd (no race with a rename), and only
    a regular file is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableFileError(exc.strerror or str(exc)) from None
    except ValueError:  # an embedded NUL byte (possible from the Python API, not from argv)
        raise UnreadableFileError("the file name contains a NUL byte") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFileError(f"it is {_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise UnreadableFileError(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
