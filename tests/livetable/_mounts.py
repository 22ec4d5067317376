"""Helpers that build mount tables inside a sandbox (call them only from mountns tests)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping

from mountplan._kernel import (
    AtFlag,
    MountAttr,
    MoveMountFlag,
    OpenFlag,
    OpenTreeFlag,
    Propagation,
    Resolve,
    fsconfig_create,
    fsconfig_set_flag,
    fsconfig_set_string,
    fsmount,
    fsopen,
    mount_setattr,
    move_mount,
    open_tree,
    openat2,
)

AT_FDCWD = -100
_DIR = OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC
_BENEATH = Resolve.BENEATH | Resolve.NO_SYMLINKS | Resolve.NO_MAGICLINKS


def mount_tmpfs(
    dirfd: int,
    name: str,
    options: Mapping[str, str | None] | None = None,
    attrs: MountAttr = MountAttr(0),  # noqa: B008 - an immutable IntFlag value
    fs_type: str = "tmpfs",
) -> None:
    """Mount a fresh ``fs_type`` on ``name`` beneath ``dirfd`` (fd-pinned target)."""
    with fsopen(fs_type) as fs:
        for key, value in (options or {}).items():
            if value is None:
                fsconfig_set_flag(fs.fileno(), key)
            else:
                fsconfig_set_string(fs.fileno(), key, value)
        fsconfig_create(fs.fileno())
        with fsmount(fs.fileno(), attrs) as mnt, openat2(dirfd, name, _DIR, _BENEATH) as target:
            move_mount(
                mnt.fileno(), "", target.fileno(), "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH
            )


def bind(dirfd: int, source: str, target: str, recursive: bool = False) -> None:
    """Bind-mount ``source`` onto ``target``, both beneath ``dirfd``."""
    flags = OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC | (OpenTreeFlag.RECURSIVE if recursive else 0)
    with open_tree(dirfd, source, flags) as tree, openat2(dirfd, target, _DIR, _BENEATH) as to:
        move_mount(tree.fileno(), "", to.fileno(), "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH)


def set_propagation(dirfd: int, name: str, propagation: Propagation) -> None:
    with openat2(dirfd, name, _DIR, _BENEATH) as fd:
        mount_setattr(fd.fileno(), "", AtFlag.EMPTY_PATH, propagation=propagation)


def scratch(path: str = "/tmp/livetable") -> int:
    """A private tmpfs at ``path`` to build on (so nothing lands on the host's /tmp); its fd."""
    os.makedirs(path, exist_ok=True)
    with openat2(AT_FDCWD, os.path.dirname(path), _DIR, Resolve(0)) as parent:
        mount_tmpfs(parent.fileno(), os.path.basename(path), {"source": "scratch", "mode": "755"})
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


#: Names with the four characters mountinfo escapes, plus a non-ASCII one.
TRICKY = ["sp ace", "t\tab", "new\nline", "back\\slash", "all \t\n\\ four", "uni\u00e9"]

_ATTR_CYCLE = [
    MountAttr(0),
    MountAttr.RDONLY | MountAttr.NOSUID,
    MountAttr.NODEV | MountAttr.NOEXEC | MountAttr.NOATIME,
    MountAttr.STRICTATIME | MountAttr.NODIRATIME,
    MountAttr.NOSYMFOLLOW,
]
_SOURCES = ["none", "", "src with space", "tab\tsrc", "back\\src", "plain"]


def build_table(count: int, base: str = "/tmp/livetable") -> list[str]:
    """Mount ``count`` tmpfs beneath a scratch tmpfs at ``base``; return their paths.

    The mix covers: escaped characters in names and sources, empty sources, each
    attribute group, every propagation mode (including shared+slave), stacked
    mounts (every 50th mount gets a second tmpfs on top) and binds of earlier
    mounts (every 40th).
    """
    base_fd = scratch(base)
    paths: list[str] = []
    try:
        for i in range(count):
            name = f"m{i:05d} {TRICKY[i % len(TRICKY)]}"
            os.mkdir(name, dir_fd=base_fd)
            if i % 40 == 39 and paths:
                bind(base_fd, os.path.basename(paths[i // 2]), name)
            else:
                options: dict[str, str | None] = {"source": _SOURCES[i % len(_SOURCES)]}
                if i % 3 == 0:
                    options["size"] = f"{1 + i % 7}M"
                if i % 11 == 0:
                    options["nr_inodes"] = "1k"
                if i % 13 == 0:
                    options["mode"] = "700"
                if i % 17 == 0:
                    options["ro"] = None
                mount_tmpfs(base_fd, name, options, _ATTR_CYCLE[i % len(_ATTR_CYCLE)])
            if i % 50 == 49:
                mount_tmpfs(base_fd, name, {"source": "top"})
            paths.append(f"{base}/{name}")
        # Propagation: peers and slaves of earlier mounts.
        for i in range(0, count, 9):
            name = os.path.basename(paths[i])
            set_propagation(base_fd, name, Propagation.SHARED)
        for i in range(0, count - 9, 27):
            # bind of a shared mount joins its peer group; then demote to slave of it.
            name = f"slave{i:05d}"
            os.mkdir(name, dir_fd=base_fd)
            bind(base_fd, os.path.basename(paths[i]), name)
            set_propagation(base_fd, name, Propagation.SLAVE)
            if i % 2 == 0:
                set_propagation(base_fd, name, Propagation.SHARED)  # shared and slave
            paths.append(f"{base}/{name}")
        for i in range(4, count, 23):
            set_propagation(base_fd, os.path.basename(paths[i]), Propagation.UNBINDABLE)
    finally:
        os.close(base_fd)
    return paths


def findmnt_rows() -> list[dict[str, object]]:
    """``findmnt --json --list`` with the columns the agreement tests compare."""
    out = subprocess.run(
        [
            "/usr/bin/findmnt",
            "--json",
            "--list",
            "-o",
            "ID,PARENT,TARGET,SOURCE,FSTYPE,VFS-OPTIONS,FS-OPTIONS,PROPAGATION",
        ],
        check=True,
        capture_output=True,
    ).stdout
    rows: list[dict[str, object]] = json.loads(out.decode("utf-8", "surrogateescape"))["filesystems"]
    return rows
