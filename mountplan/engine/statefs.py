"""The state directory and its files: trusted only if the caller owns it, every file opened beneath it without following links."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time

from mountplan.errors import StateError

#: A state file or journal larger than this is not one of ours.
MAX_FILE_BYTES = 256 * 1024 * 1024


def file_error(op: str, path: str, exc: OSError) -> StateError:
    """One wording for every failed file operation: what, where, and the errno."""
    code = exc.errno or 0
    return StateError(f"cannot {op} {path}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"



# ---------------------------------------------------------------------- directory and files


def default_state_dir() -> str:
    """``/run/mountplan`` for root, else ``$XDG_RUNTIME_DIR/mountplan``; never a shared /tmp path.

    A fixed name in /tmp could be pre-created by another user, who would then
    own our lock, state and journal.
    """
    if os.geteuid() == 0:
        return "/run/mountplan"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "mountplan")
    raise StateError("no state directory: XDG_RUNTIME_DIR is not set; pass --state-dir DIR (a directory you own, "
                     "on tmpfs) or set XDG_RUNTIME_DIR")


def _hint() -> str:
    return "pass --state-dir DIR (a directory you own)" + ("" if os.geteuid() == 0 else " or set XDG_RUNTIME_DIR")


def open_state_dir(path: str, *, create: bool = True) -> int:
    """Open (creating the last component, mode 0700) and vet the state directory; return its fd.

    Refused unless owned by the caller and not group/other-writable: anyone who
    can write it can plant a journal that makes us unmount or delete things.
    """
    parent, name = os.path.split(path.rstrip("/")) if path.rstrip("/") else ("/", ".")
    try:
        pfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"{file_error('open the parent of state directory', path, exc)}; {_hint()}") from None
    try:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # lost a race with another mountplan: vetted below
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, flags, dir_fd=pfd)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not create:
            raise
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateError(f"state directory {path} is a symlink or not a directory; {_hint()}") from None
        raise StateError(f"{file_error('open state directory', path, exc)}; {_hint()}") from None
    finally:
        os.close(pfd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise StateError(
            f"state directory {path} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: "
            f"it must be owned by uid {os.geteuid()} and writable by nobody else, or another user could "
            f"plant the files mountplan acts on; fix its owner and mode or {_hint()}"
        )
    return fd


def open_in_dir(dir_fd: int, name: str, flags: int, shown: str) -> int:
    """Open a file of the state directory; refuse anything but a regular file we own.

    O_NOFOLLOW: a planted symlink is not followed to a victim's file; O_NONBLOCK:
    a FIFO in its place does not hang the open.
    """
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not flags & os.O_CREAT:
            raise  # "no such file" is an answer when reading; when creating, the directory is unusable
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.ETXTBSY):
            with contextlib.suppress(OSError):
                kind = file_kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
                raise StateError(f"{shown} is {kind}, not a regular file; refusing to use it") from None
        raise file_error("open", shown, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        what = f"is {file_kind(st.st_mode)}, not a regular file" if not stat.S_ISREG(st.st_mode) else \
            f"is owned by uid {st.st_uid}, not {os.geteuid()}"
        raise StateError(f"{shown} {what}; refusing to use it")
    return fd


def read_all(fd: int, shown: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise StateError(f"{shown} is larger than {MAX_FILE_BYTES} bytes; not one of mountplan's files")
    except OSError as exc:
        raise file_error("read", shown, exc) from None
    return b"".join(chunks)


def write_atomic(path: str, data: bytes, mode: int, *, dir_fd: int | None = None, durable: bool = True) -> None:
    """Replace ``path`` (relative to ``dir_fd`` if given) with ``data``: temp file, rename.

    A reader (or a killed writer) sees the old file or the new one, never a part.
    Only a regular file is ever replaced (``plan -o /dev/full`` must not swap out
    the device). Every failure is a StateError and leaves no temporary file.
    ``durable`` adds two fsyncs that matter only on a disk: the file's, so a
    power loss after the rename cannot leave an empty file under the new name
    (ext4/xfs delayed allocation), and the directory's, so the rename itself
    survives. Saved plans need them; the state, on tmpfs and refused after a
    reboot anyway (its boot id), does not.
    """
    name = os.path.basename(path)
    own = dir_fd is None
    if own:
        try:
            dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise file_error("open the directory of", path, exc) from None
    assert dir_fd is not None
    try:
        if name in ("", ".", ".."):
            raise StateError(f"refusing to replace {path}: it is a directory")
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise file_error("stat", path, exc) from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise StateError(f"refusing to replace {path}: it is {file_kind(st.st_mode)}; only a regular file is replaced")
        # Random, hidden, O_EXCL|O_NOFOLLOW: a planted name cannot redirect the write.
        # (os.urandom, not secrets: that module costs every process random, base64 and hmac.)
        tmp = f".{name[:200]}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            raise file_error("create a temporary file beside", path, exc) from None
        op = "write"
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    op = "fsync"
                    os.fsync(fd)
            finally:
                os.close(fd)
            op = "rename a temporary file onto"
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            if isinstance(exc, OSError):
                raise file_error(op, path, exc) from None
            raise
        if durable:
            try:
                os.fsync(dir_fd)
            except OSError as exc:
                raise file_error("fsync the directory of", path, exc) from None
    finally:
        if own:
            os.close(dir_fd)


def flock_within(fd: int, timeout: float) -> bool:
    """flock(LOCK_EX) ``fd``, retrying every 20 ms for up to ``timeout`` s; False when it stayed held."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
