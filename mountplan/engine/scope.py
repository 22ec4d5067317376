"""The boot and mount namespace a state file or journal belongs to: mount ids mean nothing elsewhere."""

from __future__ import annotations

import fcntl
import functools
import os
import struct
from dataclasses import dataclass
from typing import Any

from mountplan.errors import StateError

from .statefs import file_error

_NS_GET_MNTNS_ID = 0x8008B705


class ForeignStateError(StateError):
    """A state file or journal was written in another boot or mount namespace."""


# ---------------------------------------------------------------------- scope


@dataclass(frozen=True, slots=True)
class Scope:
    """The boot and mount namespace a state file or journal belongs to."""

    boot_id: str
    mntns: int  # st_ino of /proc/thread-self/ns/mnt (reused once a namespace dies)
    mntns_id: int | None = None  # NS_GET_MNTNS_ID, never reused within a boot; None before 6.8

    def to_json(self) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "mntns": self.mntns, "mntns_id": self.mntns_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scope | None:
        """The scope recorded in ``data``, or None when it has none (or a malformed one)."""
        boot, ino, uid = data.get("boot_id"), data.get("mntns"), data.get("mntns_id")
        if type(boot) is not str or type(ino) is not int or not (uid is None or type(uid) is int):
            return None
        return cls(boot, ino, uid)

    def mismatch(self, now: Scope) -> str | None:
        """Why a file of this scope must not be acted on ``now``, or None when it may."""
        if self.boot_id != now.boot_id:
            return f"was written in another boot (boot id {self.boot_id}, this boot is {now.boot_id})"
        if self.mntns != now.mntns or (None not in (self.mntns_id, now.mntns_id) and self.mntns_id != now.mntns_id):
            return (f"was written in another mount namespace (mnt:[{self.mntns}] id {self.mntns_id}, "
                    f"this process is in mnt:[{now.mntns}] id {now.mntns_id})")
        return None


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError as exc:
        raise file_error("read", "/proc/sys/kernel/random/boot_id", exc) from None


def current_scope() -> Scope:
    """This boot and this thread's mount namespace (read every time: ``run --unshare`` changes it)."""
    path = "/proc/thread-self/ns/mnt"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise file_error("open", path, exc) from None
    try:
        ino = os.fstat(fd).st_ino
        buf = bytearray(8)
        try:
            fcntl.ioctl(fd, _NS_GET_MNTNS_ID, buf)
            ns_id: int | None = struct.unpack("<Q", buf)[0]
        except OSError:  # ENOTTY before 6.8: the inode number alone names the namespace
            ns_id = None
    finally:
        os.close(fd)
    return Scope(_boot_id(), ino, ns_id)


def refuse_foreign(path: str, what: str, scope: Scope | None, now: Scope | None = None) -> None:
    """Raise ForeignStateError unless ``scope`` is this boot and mount namespace (``now``, read if not given)."""
    why = "carries no boot and mount namespace id" if scope is None else scope.mismatch(now or current_scope())
    if why is not None:
        raise ForeignStateError(
            f"{what} {path} {why}; refusing to act on it: the mount ids it records name nothing here. "
            "Use it from the namespace that wrote it, or remove it once its mounts are gone"
        )
