"""bench/c/build_action.c's "exact" round, driven from Python through mountplan's own ``_kernel`` wrappers.

The same kernel calls in the same order with the same checks, in a plain loop: no
engine, no journal, state, lock, live-table model or diff. Next to the C loop it
prices the language (CPython + ctypes per call); next to the engine, the engine's
own bookkeeping. ``trace`` names the backend calls as the engine's recorder does,
so bench_vs_c.py checks this loop against the engine like it checks the C file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from mountplan import _kernel as k
from mountplan._kernel import (
    AT_FDCWD,
    AtFlag,
    MountAttr,
    MoveMountFlag,
    OpenFlag,
    OpenTreeFlag,
    Propagation,
    Resolve,
)
from mountplan._kernel.statmount import StatmountBuffer, listmount
from mountplan.errors import KernelError

BENEATH = Resolve.BENEATH | Resolve.NO_SYMLINKS | Resolve.NO_MAGICLINKS
ANY = OpenFlag.PATH | OpenFlag.NOFOLLOW | OpenFlag.CLOEXEC
DIR = OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC
EMPTY = AtFlag.EMPTY_PATH
NOFOLLOW = AtFlag.SYMLINK_NOFOLLOW
NSD = MountAttr.NOSUID | MountAttr.NODEV
BOTH_EMPTY = MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
SCAN_MASK, TABLE_MASK = 0x12, 0x3BF
MS_SHARED = 1 << 20


class Loop:
    """One root, one StatmountBuffer; ``call`` is where a trace hooks in."""

    def __init__(self, root: str, note: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.sb = StatmountBuffer()
        self.note = note
        self.ours: set[int] = set()
        self.root_mount = 0

    def close(self) -> None:
        os.close(self.rootfd)

    # --- the backend calls (named as the engine's recorder names them) ---

    def call(self, name: str) -> Callable[..., object]:
        if self.note is not None:
            self.note(name)
        return getattr(k, name)  # type: ignore[no-any-return]

    def beneath(self, dirfd: int, path: str, how: OpenFlag) -> k.Fd:
        return self.call("openat2")(dirfd, path, how, BENEATH)  # type: ignore[return-value]

    def probe_absent(self, dirfd: int, path: str, how: OpenFlag) -> None:
        if self.call("openat2_if_exists")(dirfd, path, how, BENEATH) is not None:
            raise SystemExit(f"{path} exists")

    def mount_id(self, dirfd: int, path: str = "", flags: AtFlag = EMPTY) -> int:
        return self.call("statx_mount_ids")(dirfd, path, flags).mnt_id  # type: ignore[attr-defined,no-any-return]

    def evidence(self, dirfd: int, path: str, flags: AtFlag) -> None:
        self.call("root_evidence")(dirfd, path, flags)

    # --- the live table beneath a path, as build_action.c's read_beneath ---

    def read_beneath(self, path: str) -> int:
        sb = self.sb
        holder = k.statx_mount_ids(AT_FDCWD, path, NOFOLLOW).mnt_id
        while True:
            got = sb.call(holder, SCAN_MASK)
            point = sb.string(108) if got & 0x10 else ""
            parent = sb.u64(48)
            if point != path or parent in (0, holder):
                break
            holder = parent
        found = 0
        for mnt_id in listmount(holder, batch=512):
            got = sb.call(mnt_id, SCAN_MASK)
            point = sb.string(108) if got & 0x10 else ""
            if point == path or point.startswith(path + "/"):
                sb.call(mnt_id, TABLE_MASK)
                found += 1
        return found

    def check_parent(self, parent: int) -> None:
        if parent in self.ours or parent == self.root_mount:
            return
        self.root_mount = parent
        self.sb.call(parent, TABLE_MASK)
        if self.sb.u64(72) & MS_SHARED:
            raise SystemExit("target lies on a shared mount")

    # --- apply ---

    def new_fs(self, fs_type: str, options: tuple[tuple[str, str | None], ...], attrs: MountAttr) -> k.Fd:
        fs: k.Fd = self.call("fsopen")(fs_type)  # type: ignore[assignment]
        with fs:
            for key, value in options:
                if value is None:
                    self.call("fsconfig_set_flag")(fs.fileno(), key)
                else:
                    self.call("fsconfig_set_string")(fs.fileno(), key, value)
            self.call("fsconfig_create")(fs.fileno())
            return self.call("fsmount")(fs.fileno(), attrs)  # type: ignore[return-value]

    def make_dir(self, dirfd: int, name: str, how: OpenFlag) -> k.Fd:
        self.probe_absent(dirfd, name, how)
        self.call("mkdirat")(dirfd, name, 0o755)
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        self.evidence(dirfd, name, AtFlag(0))
        fd = self.beneath(dirfd, name, how)
        if stat.S_ISLNK(os.fstat(fd.fileno()).st_mode):
            raise SystemExit(f"{name} is a symlink")
        return fd

    def attach(self, mnt: k.Fd, target: k.Fd, path: str, flags: AtFlag, source: str | None = None) -> None:
        self.check_parent(self.mount_id(target.fileno()))
        new = self.mount_id(mnt.fileno())
        if source is not None:
            self.read_beneath(source)
        self.call("move_mount")(mnt.fileno(), "", target.fileno(), "", BOTH_EMPTY)
        self.ours.add(new)
        target.close()
        with self.beneath(self.rootfd, path, ANY) as check:
            if self.mount_id(check.fileno()) != new:
                raise SystemExit(f"{path}: landed elsewhere")
        self.call("mount_setattr")(mnt.fileno(), "", flags, MountAttr(0), MountAttr(0), propagation=Propagation.PRIVATE)
        mnt.close()

    def fs_mount(self, fs_type: str, options: tuple[tuple[str, str | None], ...], attrs: MountAttr, name: str) -> None:
        mnt = self.new_fs(fs_type, options, attrs)
        self.attach(mnt, self.make_dir(self.rootfd, name, ANY), name, EMPTY)

    def dev_mount(self, mnt: k.Fd, name: str) -> None:
        with self.beneath(self.rootfd, "dev", DIR) as dev:
            target = self.make_dir(dev.fileno(), name, ANY)
        self.attach(mnt, target, f"dev/{name}", EMPTY)

    def apply(self) -> None:
        self.ours.clear()
        self.root_mount = 0
        rootfd = self.rootfd
        try:  # the planned symlinks are observed first: their parent, dev, is not there yet (one lookup)
            self.beneath(rootfd, "dev", DIR).close()
            raise SystemExit("dev exists")
        except KernelError as exc:
            if exc.errno != errno.ENOENT:
                raise
        if self.read_beneath(self.root):
            raise SystemExit("mounts already beneath the root")
        self.fs_mount("proc", (("source", "proc"),), NSD | MountAttr.NOEXEC, "proc")
        self.fs_mount("sysfs", (("source", "sysfs"),), NSD | MountAttr.NOEXEC | MountAttr.RDONLY, "sys")
        self.fs_mount("tmpfs", (("source", "tmpfs"), ("size", "256M"), ("mode", "1777")), NSD, "tmp")
        with self.beneath(rootfd, "toolchain", ANY) as src:
            flags = OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC | OpenTreeFlag.EMPTY_PATH | OpenTreeFlag.RECURSIVE
            mnt: k.Fd = self.call("open_tree")(src.fileno(), "", flags)  # type: ignore[assignment]
        os.fstat(mnt.fileno())
        self.call("mount_setattr")(mnt.fileno(), "", EMPTY | AtFlag.RECURSIVE, MountAttr.RDONLY | NSD, MountAttr(0))
        try:  # the engine resolves the parent first, then walks from the root
            self.beneath(rootfd, "opt", DIR).close()
            raise SystemExit("opt exists")
        except KernelError as exc:
            if exc.errno != errno.ENOENT:
                raise
        with self.make_dir(rootfd, "opt", DIR) as opt:
            target = self.make_dir(opt.fileno(), "tools", ANY)
        self.attach(mnt, target, "opt/tools", EMPTY | AtFlag.RECURSIVE, source=f"{self.root}/toolchain")
        self.fs_mount("tmpfs", (("source", "dev"), ("size", "64k"), ("mode", "0755")), NSD | MountAttr.NOEXEC, "dev")
        for name in DEVICES:
            dmnt: k.Fd = self.call("open_tree")(AT_FDCWD, f"/dev/{name}", OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC)  # type: ignore[assignment]
            os.fstat(dmnt.fileno())
            self.call("mount_setattr")(dmnt.fileno(), "", EMPTY, MountAttr.NOSUID | MountAttr.NOEXEC, MountAttr(0))
            with self.beneath(rootfd, "dev", DIR) as dev:
                self.probe_absent(dev.fileno(), name, ANY)
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                                 dir_fd=dev.fileno()))
                os.stat(name, dir_fd=dev.fileno(), follow_symlinks=False)
                self.evidence(dev.fileno(), name, AtFlag(0))
                target = self.beneath(dev.fileno(), name, ANY)
                if stat.S_ISLNK(os.fstat(target.fileno()).st_mode):
                    raise SystemExit(f"dev/{name} is a symlink")
            self.attach(dmnt, target, f"dev/{name}", EMPTY)
        pts = (("source", "devpts"), ("newinstance", None), ("ptmxmode", "0666"), ("mode", "0620"))
        self.dev_mount(self.new_fs("devpts", pts, MountAttr.NOSUID | MountAttr.NOEXEC), "pts")
        self.dev_mount(self.new_fs("tmpfs", (("source", "shm"), ("mode", "1777")), NSD), "shm")
        for name, text in LINKS:
            found = self.call("openat2_if_exists")(rootfd, "dev", ANY, BENEATH)
            assert isinstance(found, k.Fd)
            with found as dev:
                os.fstat(dev.fileno())
                self.probe_absent(dev.fileno(), name, ANY)
                self.call("symlinkat")(text, dev.fileno(), name)
                with self.beneath(dev.fileno(), name, ANY) as fd:
                    if not stat.S_ISLNK(os.fstat(fd.fileno()).st_mode) or os.readlink("", dir_fd=fd.fileno()) != text:
                        raise SystemExit(f"dev/{name} is not the symlink made")
                    self.evidence(fd.fileno(), "", EMPTY)

    # --- destroy ---

    def unmount(self, dirfd: int, name: str) -> None:
        before = self.mount_id(dirfd, name, NOFOLLOW)
        self.call("umount_at")(dirfd, name)
        if self.mount_id(dirfd, name, NOFOLLOW) == before:
            raise SystemExit(f"{name} still mounted")

    def remove(self, dirfd: int, name: str, directory: bool) -> None:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if self.mount_id(dirfd, name, NOFOLLOW) != self.mount_id(dirfd):
            raise SystemExit(f"{name} is still a mount")
        self.evidence(dirfd, name, AtFlag(0))
        self.call("unlinkat")(dirfd, name, directory=directory)

    def in_dev(self, name: str) -> None:
        # its mountpoint lies on the dev tmpfs, which is unmounted next and takes it along
        with self.beneath(self.rootfd, "dev", DIR) as dev:
            self.unmount(dev.fileno(), name)

    def destroy(self) -> None:
        rootfd = self.rootfd
        self.in_dev("shm")
        self.in_dev("pts")
        for name in reversed(DEVICES):
            self.in_dev(name)
        for name, _ in reversed(LINKS):
            with self.beneath(rootfd, "dev", DIR) as dev:
                if not stat.S_ISLNK(os.stat(name, dir_fd=dev.fileno(), follow_symlinks=False).st_mode):
                    raise SystemExit(f"dev/{name} is not a symlink")
                os.readlink(name, dir_fd=dev.fileno())
                self.evidence(dev.fileno(), name, AtFlag(0))
                self.call("unlinkat")(dev.fileno(), name)
        self.unmount(rootfd, "dev")
        self.remove(rootfd, "dev", True)
        with self.beneath(rootfd, "opt", DIR) as opt:
            self.unmount(opt.fileno(), "tools")
        with self.beneath(rootfd, "opt", DIR) as opt:  # removal resolves the parent again
            self.remove(opt.fileno(), "tools", True)
        self.remove(rootfd, "opt", True)
        for name in ("tmp", "sys", "proc"):
            self.unmount(rootfd, name)
            self.remove(rootfd, name, True)


def trace(root: str) -> list[str]:
    """The backend calls of one apply+destroy, named as the engine's recorder names them."""
    calls: list[str] = []
    loop = Loop(root, calls.append)
    try:
        loop.apply()
        calls.append("--destroy")
        loop.destroy()
    finally:
        loop.close()
    return calls
