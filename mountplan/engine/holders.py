"""Who holds a mount busy: processes whose cwd, root, open files or maps are on it.

An unmount that fails with EBUSY is only actionable when it names the culprit;
``fuser -m`` does the same scan. Processes we cannot inspect are skipped.
Process names and file names come from the processes themselves (a sandboxed
build names itself and its files as it likes), so they are escaped with
:func:`mountplan._text.printable` before they reach a message.
"""

from __future__ import annotations

import os

from mountplan._kernel import AtFlag, statx_mount_ids
from mountplan._text import printable
from mountplan.errors import KernelError


def _mnt_id(path: str) -> int | None:
    try:
        return statx_mount_ids(-100, path, AtFlag(0)).mnt_id
    except (KernelError, OSError):
        return None


def find_holders(mnt_id: int, mount_point: str | None = None, *, limit: int = 20) -> list[str]:
    """Describe up to ``limit`` processes holding mount ``mnt_id`` (``pid N (comm): what``)."""
    found: list[str] = []
    # Our own pid as this /proc sees it (it may belong to an outer pid namespace).
    me = int(os.readlink("/proc/self"))
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if not entry.isdigit() or int(entry) == me:
            continue
        base = f"/proc/{entry}"
        uses: list[str] = []
        for link in ("cwd", "root"):
            if _mnt_id(f"{base}/{link}") == mnt_id:
                uses.append(link)
        try:
            fds = os.listdir(f"{base}/fd")
        except OSError:
            fds = []
        for fd in fds:
            if _mnt_id(f"{base}/fd/{fd}") == mnt_id:
                try:
                    what = printable(os.readlink(f"{base}/fd/{fd}"))
                except OSError:
                    what = "?"
                uses.append(f"fd {fd} -> {what}")
        if mount_point:
            try:
                with open(f"{base}/maps", encoding="utf-8", errors="replace") as f:
                    for line in f:
                        path = line.rstrip("\n").split(None, 5)[5:] or [""]
                        if path[0] == mount_point or path[0].startswith(mount_point.rstrip("/") + "/"):
                            uses.append(f"maps {printable(path[0])}")
                            break
            except OSError:
                pass
        if uses:
            try:
                with open(f"{base}/comm", encoding="utf-8", errors="replace") as f:
                    comm = printable(f.read().removesuffix("\n"))
            except OSError:
                comm = "?"
            found.append(f"pid {entry} ({comm}): {', '.join(uses)}")
            if len(found) >= limit:
                break
    return found
