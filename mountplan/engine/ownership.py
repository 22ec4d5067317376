"""Is the object at a path the one mountplan made? One proof for apply, destroy, rollback and recovery.

An inode number alone proves nothing: ext4 hands a freed one out again at once.
The proof of a recorded object is its device, inode, birth time, kind and (a
symlink) its text (:func:`mountplan.object_changes.is_same_object`). Without a
recorded inode (a run killed between the create and its ``created`` journal
line, or an object just made and not yet identified) only the narrow proof of
:func:`is_plausibly_new` counts: an empty object of the right kind, owned by us
and born after the journal began.
"""

from __future__ import annotations

import errno
import os
import stat

from mountplan._kernel import AtFlag, Fd
from mountplan.errors import KernelError
from mountplan.object_identity import Found, ObservedObject

from .context import Context

__all__ = ["OP_KIND", "identify", "is_plausibly_new", "observe_at"]

_KINDS = {stat.S_IFDIR: "directory", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}
#: The object kind each journaled create makes.
OP_KIND = {"mkdir": "directory", "mkfile": "file", "mklink": "symlink"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "other")


def _observed(ctx: Context, st: os.stat_result, link: str, dirfd: int, name: str) -> ObservedObject:
    evidence = ctx.backend.root_evidence(dirfd, name, AtFlag(0) if name else AtFlag.EMPTY_PATH)
    btime = evidence.btime_ns if evidence.ino == st.st_ino else None
    return ObservedObject(Found.PRESENT, _kind(st.st_mode), st.st_dev, st.st_ino, stat.S_IMODE(st.st_mode),
                          st.st_uid, st.st_gid, link, btime=btime, size=st.st_size)


def observe_at(ctx: Context, parent: Fd, name: str, shown: str) -> ObservedObject:
    """What is at ``name`` in ``parent`` now (lstat: a final symlink is not followed)."""
    try:
        st = os.stat(name, dir_fd=parent.fileno(), follow_symlinks=False)
    except FileNotFoundError:
        return ObservedObject(Found.ABSENT)
    except OSError as exc:  # EACCES: the parent fd is O_PATH, fstatat needs search permission on it
        raise KernelError(exc.errno or errno.EIO, "fstatat", paths=[shown], flags="AT_SYMLINK_NOFOLLOW") from None
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        # A mount on top shows its own root here, not what lies under it.
        here = ctx.backend.statx_mount_ids(parent.fileno(), name, AtFlag.SYMLINK_NOFOLLOW)
        if here.mnt_id != ctx.backend.statx_mount_ids(parent.fileno()).mnt_id:
            return ObservedObject(Found.COVERED)
    link = ""
    if stat.S_ISLNK(st.st_mode):
        try:
            link = os.readlink(name, dir_fd=parent.fileno())
        except FileNotFoundError:
            return ObservedObject(Found.ABSENT)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, "readlinkat", paths=[shown]) from None
    return _observed(ctx, st, link, parent.fileno(), name)


def identify(ctx: Context, fd: Fd, shown: str) -> ObservedObject:
    """What ``fd`` (opened with O_NOFOLLOW: a symlink is the link itself) is: its identity from the fd, not a path."""
    try:
        st = os.fstat(fd.fileno())
        link = os.readlink("", dir_fd=fd.fileno()) if stat.S_ISLNK(st.st_mode) else ""
    except OSError as exc:
        raise KernelError(exc.errno or errno.EIO, "fstat", paths=[shown]) from None
    return _observed(ctx, st, link, fd.fileno(), "")


def is_plausibly_new(seen: ObservedObject, kind: str, link: str, since: int | None) -> bool:
    """``seen`` could be what a create of ``kind`` just made: empty, ours (our fsuid), born since ``since``.

    A directory's emptiness is for rmdir (or the caller) to check. ``since`` is
    the journal's begin time on the coarse clock that stamps inodes; None (an
    older journal) or a filesystem without birth times skips that part.
    """
    if seen.found is not Found.PRESENT or seen.kind != kind or seen.uid != os.geteuid():
        return False
    if (kind == "file" and seen.size != 0) or (kind == "symlink" and seen.link != link):
        return False
    return since is None or seen.btime is None or seen.btime >= since
