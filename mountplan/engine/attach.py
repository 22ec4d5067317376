"""Prepare a detached mount and attach it beneath its root: the create operation.

For each planned mount the compiler's chain of steps runs here: fsopen/fsconfig/
fsmount or open_tree build a detached mount; the mountpoint is made (journaled)
and resolved beneath the root; then, before move_mount, the mount the target
lies on is checked (a shared parent would propagate ours to peers that destroy
never cleans), and after it the mount is looked up again beneath the root (a
directory renamed out of the root in between would otherwise carry the mount
outside it). Every path that reaches the kernel is an fd resolved beneath its
root, or an absolute host path the plan names on purpose.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mountplan._kernel import AtFlag, BorrowedFd, Fd, MountAttr, MoveMountFlag, OpenFlag
from mountplan._kernel import Propagation as KernelPropagation
from mountplan.compiler import Step, StepKind
from mountplan.errors import ExecutionError, KernelError
from mountplan.livetable import LiveMount, LiveTable, TableSource, read_live_table, statmount_live
from mountplan.model import OVERLAY_PATH_KEYS, Attr, IdMapping, MountKind, MountpointKind, MountSpec

from .attrs import has_mount_setattr, set_attrs
from .bind_source import bind_source_path, clone_bind_source
from .context import Context
from .mountpoint import MountpointMaker, no_symlink
from .roots import BENEATH, O_PATH_ANY, RootHandle, RootSet, resolve
from .transaction import Transaction, Undo
from .unmount import find_mount

_EMPTY_PATH = AtFlag.EMPTY_PATH
_EMPTY_PATH_RECURSIVE = AtFlag.EMPTY_PATH | AtFlag.RECURSIVE
_MOVE_FDS = MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH
_LAYER = OpenFlag.RDONLY | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC


@dataclass(slots=True)
class Handles:
    """Fds one mount's chain holds while it runs; all closed before any unmount."""

    fs: Fd | None = None
    mnt: Fd | None = None
    target: Fd | None = None
    #: the user namespace an idmapped bind takes its mapping from (closed once set)
    userns: Fd | None = None
    extra: list[Fd] = field(default_factory=list)
    source_is_file: bool = False
    mnt_id: int = 0
    unique: bool = True
    submounts: tuple[int, ...] = ()
    proof: list[int | None] | None = None
    #: an idmapped bind's mapping as the state records it (ManagedMount.idmap)
    idmap: dict[str, Any] | None = None
    #: (set, clear) still to apply once attached, on kernels without mount_setattr
    pending_attrs: tuple[MountAttr, MountAttr] | None = None
    created: list[dict[str, Any]] = field(default_factory=list)

    def close(self) -> None:
        for fd in (self.fs, self.mnt, self.target, self.userns, *self.extra):
            if fd is not None:
                fd.close()
        self.extra.clear()


@dataclass(slots=True)
class Attacher:
    """Runs the create chains of one apply: its transaction, roots and the live table it read."""

    ctx: Context
    tx: Transaction
    rootset: RootSet
    live: LiveTable
    #: ids of mounts this plan instance owns (committed or made in this apply)
    ours: set[int] = field(default_factory=set)
    #: mounts outside the roots looked up during this apply (the ones the roots lie on)
    outside: dict[int, LiveMount] = field(default_factory=dict)
    maker: MountpointMaker = field(init=False)
    #: user namespaces made or opened in this apply, one per distinct mapping: making
    #: one costs a process (milliseconds), and binds with the same mapping share it
    usernses: dict[IdMapping, Fd] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.maker = MountpointMaker(self.ctx, self.tx)

    def close(self) -> None:
        """Close what the chains shared (the user namespaces); the mounts keep their mappings."""
        for fd in self.usernses.values():
            fd.close()
        self.usernses.clear()

    def run_step(self, step: Step, spec: MountSpec, handles: Handles) -> None:
        """Run one step of ``spec``'s chain (a destroy step kind here is a compiler bug: KeyError)."""
        _STEP_HANDLERS[step.kind](self, step, spec, self.rootset[spec.root], handles)

    # ---------------------------------------------------------------- building

    def _fsopen(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert spec.fs_type is not None
        h.fs = self.ctx.backend.fsopen(spec.fs_type)

    def _fsconfig(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        key, sep, value = step.args[0][1].partition("=")  # args: (("option", "KEY[=VALUE]"),)
        k = self.ctx.backend
        assert h.fs is not None
        fs = h.fs.fileno()
        if not sep:
            k.fsconfig_set_flag(fs, key)
        elif spec.fs_type == "overlay" and key in OVERLAY_PATH_KEYS:
            k.fsconfig_set_string(fs, key, self._pin_layers(spec, root, key, value, h))
        else:
            k.fsconfig_set_string(fs, key, value)

    def _pin_layers(self, spec: MountSpec, root: RootHandle, key: str, value: str, h: Handles) -> str:
        """An overlay path option with every relative layer pinned beneath the root.

        A relative layer is opened with openat2 beneath the root and handed to
        overlayfs as ``/proc/self/fd/N``: the kernel follows that magic link to
        exactly the directory we pinned, with no string left to re-walk against
        the cwd or through a planted symlink, and it works for the legacy
        ``lowerdir=a:b`` list on every kernel (fds through FSCONFIG_SET_FD need
        6.13). An absolute path is a host path the plan names on purpose.
        """
        parts = value.split(":") if key == "lowerdir" else [value]
        out = []
        for part in parts:
            if part.startswith("/"):
                out.append(part)
                continue
            if key in {"upperdir", "workdir"}:
                self.maker.make_path(spec, root, part, h.created, want_file=False, mode=0o755).close()
            layer = self.ctx.backend.openat2(root.fileno(), part, _LAYER, BENEATH, shown=f"{root.name}:{part}")
            h.extra.append(layer)
            out.append(f"/proc/self/fd/{layer.fileno()}")
        return ":".join(out)

    def _create(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert h.fs is not None
        self.ctx.backend.fsconfig_create(h.fs.fileno())

    def _fsmount(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert h.fs is not None
        h.mnt = self.ctx.backend.fsmount(h.fs.fileno(), spec.kernel_attrs)
        h.fs.close()

    def _open_tree(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        h.mnt = clone_bind_source(self.ctx, spec, self.rootset)
        h.source_is_file = not stat.S_ISDIR(os.fstat(h.mnt.fileno()).st_mode)

    def _userns(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert spec.bind is not None and spec.bind.idmap is not None
        idmap = spec.bind.idmap
        shared = self.usernses.get(idmap)
        if shared is None:
            from .idmap import make_userns_for  # idmapped binds only: not on every run's import path

            shared = self.usernses[idmap] = make_userns_for(self.ctx, idmap)
        h.userns = BorrowedFd(shared.fileno(), "userns")
        h.idmap = idmap.to_json()
        if idmap.userns is not None:
            st = os.fstat(h.userns.fileno())
            h.idmap["ns"] = [st.st_dev, st.st_ino]

    def _set_attr(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert h.mnt is not None and spec.bind is not None
        attr_set = spec.kernel_attrs
        attr_clr = MountAttr(0)
        if Attr.RELATIME in spec.attrs:
            attr_clr = MountAttr.NOATIME | MountAttr.STRICTATIME
        if h.userns is not None:
            # Needs mount_setattr (required_for asks for it before any change).
            from .idmap import set_idmap

            set_idmap(self, spec, h.mnt, h.userns, attr_set, attr_clr)
            h.userns.close()
            return
        if not (attr_set or attr_clr):
            return
        if has_mount_setattr():
            flags = _EMPTY_PATH_RECURSIVE if spec.bind.recursive else _EMPTY_PATH
            self.ctx.backend.mount_setattr(h.mnt.fileno(), "", flags, attr_set, attr_clr)
        else:
            # mount(2) reaches attached mounts only: set right after move_mount.
            h.pending_attrs = (attr_set, attr_clr)

    # ---------------------------------------------------------------- mountpoint

    def _mountpoint(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        want_file = spec.mountpoint.kind is MountpointKind.FILE or (
            spec.mountpoint.kind is None and spec.kind is MountKind.BIND and h.source_is_file
        )
        # The fd that proves the mountpoint exists is the resolved target: keep
        # it for move_mount rather than resolving the same path a second time.
        h.target = self.maker.make_path(
            spec, root, spec.target, h.created, want_file=want_file, mode=spec.mountpoint.mode, create=spec.mountpoint.create
        )

    def _resolve_target(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        if h.target is None:  # else the mkdir step already holds it, resolved the same way
            h.target = no_symlink(resolve(self.ctx.backend, root, spec.target, O_PATH_ANY), f"{root.name}:{spec.target}")

    # ---------------------------------------------------------------- attach

    def _journal_id(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        """Capture the detached mount's identity and journal it *before* attaching.

        If we are killed right after move_mount, recovery finds this id at the
        target and knows the mount is ours.
        """
        k = self.ctx.backend
        assert h.mnt is not None and h.target is not None
        self._check_parent(spec, h.target, f"{spec.root}:{spec.target}")
        ids = k.statx_mount_ids(h.mnt.fileno())
        h.mnt_id, h.unique = ids.mnt_id, ids.unique
        recursive = spec.bind is not None and spec.bind.recursive
        if recursive:
            h.submounts = clone_ids(self.ctx, h.mnt, self.source_path(spec), ids.mnt_id)
        if not ids.unique:
            # A 32-bit id is reused at once: keep what the root looks like too.
            h.proof = k.root_evidence(h.mnt.fileno()).to_json()
        self.tx.record(Undo(
            0, "mount", spec.root, spec.target, mnt_id=ids.mnt_id, unique=ids.unique, mount=spec.name,
            recursive=recursive, submounts=h.submounts, proof=h.proof,
        ))

    def _move_mount(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert h.mnt is not None and h.target is not None
        shown = f"{spec.root}:{spec.target}"
        self.ctx.backend.move_mount(h.mnt.fileno(), "", h.target.fileno(), "", _MOVE_FDS, shown_target=shown)
        h.target.close()
        self.ours.add(h.mnt_id)

    def _verify(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert h.mnt is not None
        shown = f"{spec.root}:{spec.target}"
        self._check_landed(spec, root, h, shown)
        if h.pending_attrs is not None:
            set_attrs(self.ctx, h.mnt.fileno(), *h.pending_attrs, shown=shown)

    def source_path(self, spec: MountSpec) -> str:
        return bind_source_path(spec, self.rootset)

    def _check_parent(self, spec: MountSpec, target: Fd, shown: str) -> None:
        """Refuse to attach on a shared mount that is not ours: the mount would propagate to its peers.

        A copy that propagated into a peer (or a slave) is not ours to unmount and
        destroy could never take it back.
        """
        ids = self.ctx.backend.statx_mount_ids(target.fileno())
        if ids.mnt_id in self.ours:
            return  # beneath one of our own mounts: its propagation is what the plan asked for
        parent = self.mount_by_id(ids.mnt_id, ids.unique)
        if parent is None or parent.propagation is not KernelPropagation.SHARED:
            return
        raise ExecutionError(
            f"refusing to mount {shown}: it lies on {parent.mount_point} ({parent.fs_type}), a shared mount "
            f"(peer group {parent.peer_group}); the mount would propagate to every peer and slave of that group, "
            "where destroy cannot remove it. Set `private: true` on the root in the plan (apply makes the root "
            f"a private bind of itself) or make that mount private (mount --make-rprivate {parent.mount_point})",
            step=f"{spec.name}:move_mount",
        )

    def mount_by_id(self, mnt_id: int, unique: bool) -> LiveMount | None:
        """A mount from the apply's table, which holds only what is beneath the roots; the
        mount a root itself lies on is looked up once (statmount by id, else the full table)."""
        found = find_mount(self.live, mnt_id, unique) or self.outside.get(mnt_id)
        if found is not None:
            return found
        try:
            found = statmount_live(mnt_id) if unique and self.live.source is TableSource.STATMOUNT else None
        except KernelError:
            found = None
        if found is None:
            found = find_mount(read_live_table(), mnt_id, unique)
        if found is not None:
            self.outside[mnt_id] = found
        return found

    def _check_landed(self, spec: MountSpec, root: RootHandle, h: Handles, shown: str) -> None:
        """After attaching, look the target up beneath the root again: it must be our mount.

        If a directory of the path was renamed out of the root between resolution
        and move_mount, the mount is somewhere else: detach it through its own fd
        (not by a path, which could hit someone else's mount) and fail.
        """
        assert h.mnt is not None
        k = self.ctx.backend
        where: str
        try:
            check = resolve(k, root, spec.target, O_PATH_ANY)
        except KernelError as exc:
            if exc.errno not in {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV}:
                raise  # not a sign of a move: rollback unmounts it like any other failure
            where = f"{shown} no longer resolves beneath the root ({exc.errno_name})"
        else:
            try:
                landed = k.statx_mount_ids(check.fileno()).mnt_id
            finally:
                check.close()
            if landed == h.mnt_id:
                return
            where = f"the mount at {shown} is not ours (mount id {landed}, ours {h.mnt_id})"
        k.detach_fd(h.mnt.fileno(), shown=shown)
        raise ExecutionError(
            f"mount {spec.name!r} did not land beneath root {root.name!r}: {where}; a directory on the path was "
            "moved outside the root while mounting (an attack or a race); the mount was detached",
            step=f"{spec.name}:move_mount",
        )

    def _propagation(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert h.mnt is not None
        recursive = spec.bind is not None and spec.bind.recursive
        set_attrs(self.ctx, h.mnt.fileno(), propagation=spec.propagation.kernel_value, recursive=recursive,
                  shown=f"{spec.root}:{spec.target}")
        h.mnt.close()


def clone_ids(ctx: Context, mnt: Fd, source_path: str, own_id: int) -> tuple[int, ...]:
    """Ids of the submounts a recursive clone brought along, read from the *detached* tree.

    Known before move_mount, so they are journaled with the mount itself: a kill
    right after attaching still leaves proof of which submounts are ours. Each
    submount of the source (from the live table) is looked up inside the clone
    through its fd, beneath it and without symlinks.
    """
    k = ctx.backend
    prefix = source_path.rstrip("/") or "/"
    points = sorted({m.mount_point[len(prefix):].lstrip("/") for m in read_live_table(beneath=[prefix])} - {""})
    found: set[int] = set()
    for point in points:
        try:
            fd = k.openat2(mnt.fileno(), point, O_PATH_ANY, BENEATH, shown=point)
        except KernelError as exc:
            if exc.errno not in {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV}:
                raise
            continue  # not reachable in the clone: nothing of ours there
        try:
            found.add(k.statx_mount_ids(fd.fileno()).mnt_id)
        finally:
            fd.close()
    return tuple(sorted(found - {own_id}))


_STEP_HANDLERS: dict[StepKind, Callable[[Attacher, Step, MountSpec, RootHandle, Handles], None]] = {
    StepKind.FSOPEN: Attacher._fsopen,
    StepKind.FSCONFIG: Attacher._fsconfig,
    StepKind.CREATE: Attacher._create,
    StepKind.FSMOUNT: Attacher._fsmount,
    StepKind.OPEN_TREE: Attacher._open_tree,
    StepKind.USERNS: Attacher._userns,
    StepKind.SET_ATTR: Attacher._set_attr,
    StepKind.ENSURE_MOUNTPOINT: Attacher._mountpoint,
    StepKind.RESOLVE_TARGET: Attacher._resolve_target,
    StepKind.JOURNAL_ID: Attacher._journal_id,
    StepKind.MOVE_MOUNT: Attacher._move_mount,
    StepKind.VERIFY: Attacher._verify,
    StepKind.SET_PROPAGATION: Attacher._propagation,
}
