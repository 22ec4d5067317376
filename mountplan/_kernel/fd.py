"""An owned file descriptor: closed exactly once, by whoever holds it."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Self


class Fd:
    """Owns one file descriptor.

    ``close()`` is idempotent; ``detach()`` hands the number to the caller and
    stops owning it. A mount fd left open keeps its mount busy (an unmount gets
    EBUSY), so the engine closes these eagerly rather than waiting for GC.
    """

    __slots__ = ("_fd", "label")

    def __init__(self, fd: int, label: str = "") -> None:
        if fd < 0:
            raise ValueError(f"invalid fd {fd}")
        self._fd: int | None = fd
        self.label: str = label

    def fileno(self) -> int:
        """The descriptor number; ValueError once closed or detached."""
        if self._fd is None:
            raise ValueError(f"fd {self.label or ''} is closed".replace("  ", " "))
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def detach(self) -> int:
        """Give up ownership and return the number; the caller must close it."""
        fd = self.fileno()
        self._fd = None
        return fd

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else str(self._fd)
        return f"Fd({state}{', ' + self.label if self.label else ''})"


class BorrowedFd(Fd):
    """A view of a descriptor someone else owns: ``close()`` only forgets it.

    Lets code that always closes what it resolved be handed a long-lived fd
    (an open root) without a dup(2) or a second open.
    """

    __slots__ = ()

    def close(self) -> None:
        self._fd = None
