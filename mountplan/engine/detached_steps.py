"""The create chain of one mount when the target is a detached tree rather than a mount table.

The building steps (fsopen, fsconfig, fsmount, open_tree, mount_setattr on the
new mount, the mountpoint) are :class:`~.attach.Attacher`'s own. What differs
is the attach half, and only when the tree is made of detached mounts (Linux
6.15+, see docs/detached.md):

* nothing is journaled and no parent is looked up in a mount table: the tree is
  in none, and closing its fd ends every mount in it;
* a mount inside a detached tree is neither the root of an anonymous namespace
  nor in ours, so the kernel refuses ``mount_setattr`` on it (EINVAL, seen on
  6.18): propagation is set on the new mount *before* it is moved in;
* a landing check that fails cannot detach one mount of the tree (umount2 only
  reaches our own namespace): the error unwinds and the whole tree is closed;
* overlayfs takes a private clone of each layer, which the kernel allows for a
  mount of our namespace or the root of a detached tree only
  (``clone_private_mount``): every relative layer is handed over as a fresh
  one-mount clone of the pinned directory, upper and work as two paths beneath
  one clone of their common parent (overlayfs wants them on the same mount).

When the tree is built attached in a throwaway namespace instead (older kernels),
everything but the journal is the Attacher's unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mountplan._kernel import Fd, OpenFlag, OpenTreeFlag
from mountplan.compiler import Step, StepKind
from mountplan.errors import ExecutionError
from mountplan.model import OVERLAY_PATH_KEYS, MountSpec

from .attach import Attacher, Handles
from .attrs import set_attrs
from .roots import BENEATH, O_PATH_DIR, RootHandle, resolve

_LAYER = OpenFlag.RDONLY | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC
_CLONE_ONE = OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC | OpenTreeFlag.EMPTY_PATH
_UPPER_KEYS = ("upperdir", "workdir")


@dataclass(slots=True)
class TreeSteps:
    """Runs one mount's compiled chain into a tree; ``detached_tree`` says which kind of tree."""

    attacher: Attacher
    #: True: the tree is detached mounts joined by move_mount (6.15+); False: attached in a private namespace
    detached_tree: bool
    #: per overlay mount: the clone of upper's and work's common parent, and that parent's path
    _upper_clone: dict[str, tuple[Fd, str]] = field(default_factory=dict)

    def run_step(self, step: Step, spec: MountSpec, handles: Handles) -> None:
        """Run one step of ``spec``'s chain against the tree that holds ``spec.root``."""
        own = _DETACHED if self.detached_tree else _ATTACHED
        handler = own.get(step.kind)
        if handler is None or (step.kind is StepKind.FSCONFIG and not _is_overlay_path(step, spec)):
            self.attacher.run_step(step, spec, handles)
            return
        handler(self, step, spec, self.attacher.rootset[spec.root], handles)

    # ---------------------------------------------------------------- identity

    def _identify(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        """The new mount's id, for the landing check; nothing to journal (no mount table holds the tree)."""
        assert h.mnt is not None
        ids = self.attacher.ctx.backend.statx_mount_ids(h.mnt.fileno())
        h.mnt_id, h.unique = ids.mnt_id, ids.unique
        if self.detached_tree:
            # Still the root of its own anonymous namespace: the last moment the
            # kernel changes it (inside the tree mount_setattr answers EINVAL).
            # Attributes a kernel without mount_setattr left for after the move go now too.
            recursive = spec.bind is not None and spec.bind.recursive
            shown = f"{spec.root}:{spec.target}"
            if h.pending_attrs is not None:
                set_attrs(self.attacher.ctx, h.mnt.fileno(), *h.pending_attrs, shown=shown)
                h.pending_attrs = None
            set_attrs(self.attacher.ctx, h.mnt.fileno(), propagation=spec.propagation.kernel_value,
                      recursive=recursive, shown=shown)

    # ---------------------------------------------------------------- after the move

    def _landed(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        """The target, looked up beneath the tree's root again, must be the mount just moved there."""
        k = self.attacher.ctx.backend
        check = resolve(k, root, spec.target)
        try:
            landed = k.statx_mount_ids(check.fileno()).mnt_id
        finally:
            check.close()
        if landed != h.mnt_id:
            raise ExecutionError(
                f"mount {spec.name!r} did not land at {spec.root}:{spec.target} in the detached tree (mount id there "
                f"{landed}, ours {h.mnt_id}); a directory on the path changed while mounting",
                step=f"{spec.name}:move_mount",
            )

    def _done(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        assert h.mnt is not None
        h.mnt.close()  # propagation was set before the move (_identify)

    # ---------------------------------------------------------------- overlay layers

    def _overlay_path(self, step: Step, spec: MountSpec, root: RootHandle, h: Handles) -> None:
        key, _, value = step.args[0][1].partition("=")
        assert h.fs is not None
        if key in _UPPER_KEYS:
            shown = self._upper_path(spec, root, key, value, h)
        else:
            shown = ":".join(self._lower_path(root, part, h) for part in (value.split(":") if key == "lowerdir" else [value]))
        self.attacher.ctx.backend.fsconfig_set_string(h.fs.fileno(), key, shown)

    def _lower_path(self, root: RootHandle, part: str, h: Handles) -> str:
        """A lower (or data) layer: a one-mount clone of exactly the pinned directory."""
        if part.startswith("/"):
            return part  # a host path the plan names on purpose
        k = self.attacher.ctx.backend
        layer = k.openat2(root.fileno(), part, _LAYER, BENEATH, shown=f"{root.name}:{part}")
        try:
            clone: Fd = k.open_tree(layer.fileno(), "", _CLONE_ONE)
        finally:
            layer.close()
        h.extra.append(clone)
        return f"/proc/self/fd/{clone.fileno()}"

    def _upper_path(self, spec: MountSpec, root: RootHandle, key: str, value: str, h: Handles) -> str:
        """upperdir/workdir: made if missing, then opened beneath one clone of their common parent."""
        if value.startswith("/"):
            return value
        k = self.attacher.ctx.backend
        cached = self._upper_clone.get(spec.name)
        if cached is None:
            cached = self._clone_upper_parent(spec, root, h)
            self._upper_clone[spec.name] = cached
        clone, parent = cached
        rest = value[len(parent) + 1:] if parent else value
        layer = k.openat2(clone.fileno(), rest, _LAYER, BENEATH, shown=f"{root.name}:{value}")
        h.extra.append(layer)
        return f"/proc/self/fd/{layer.fileno()}"

    def _clone_upper_parent(self, spec: MountSpec, root: RootHandle, h: Handles) -> tuple[Fd, str]:
        k = self.attacher.ctx.backend
        paths = [o.value for o in spec.options if o.key in _UPPER_KEYS and o.value and not o.value.startswith("/")]
        parts = [p.split("/")[:-1] for p in paths]
        common: list[str] = []
        for names in zip(*parts, strict=False):
            if len(set(names)) != 1:
                break
            common.append(names[0])
        parent = "/".join(common)
        for path in paths:  # both made now: the one-mount clone must already show them
            self.attacher.maker.make_path(spec, root, path, h.created, want_file=False, mode=0o755).close()
        # A one-mount clone shows only the mount the parent lies on: upper and work
        # must lie on that same mount, or the clone would show the directories under them.
        parent_fd = resolve(k, root, parent, O_PATH_DIR)
        try:
            parent_id = k.statx_mount_ids(parent_fd.fileno()).mnt_id
            for path in paths:
                fd = resolve(k, root, path, O_PATH_DIR)
                try:
                    if k.statx_mount_ids(fd.fileno()).mnt_id != parent_id:
                        raise ExecutionError(
                            f"mount {spec.name!r}: overlay {path!r} is not on the same mount as {parent or '.'!r} "
                            "(a mount sits between them); a detached overlay needs upperdir and workdir on the "
                            "mount of their common parent directory",
                            step=f"{spec.name}:fsconfig",
                        )
                finally:
                    fd.close()
            clone: Fd = k.open_tree(parent_fd.fileno(), "", _CLONE_ONE)
        finally:
            parent_fd.close()
        h.extra.append(clone)
        return clone, parent


def _is_overlay_path(step: Step, spec: MountSpec) -> bool:
    key = step.args[0][1].partition("=")[0] if step.args else ""
    return spec.fs_type == "overlay" and key in OVERLAY_PATH_KEYS


_Handler = Callable[[TreeSteps, Step, MountSpec, RootHandle, Handles], None]
_DETACHED: dict[StepKind, _Handler] = {
    StepKind.FSCONFIG: TreeSteps._overlay_path,
    StepKind.JOURNAL_ID: TreeSteps._identify,
    StepKind.VERIFY: TreeSteps._landed,
    StepKind.SET_PROPAGATION: TreeSteps._done,
}
_ATTACHED: dict[StepKind, _Handler] = {
    StepKind.JOURNAL_ID: TreeSteps._identify,
}
