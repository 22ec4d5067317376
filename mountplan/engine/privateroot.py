"""A root made private: a private recursive bind of the root onto itself, like runc's rootfs propagation.

A root on a shared mount (systemd makes ``/`` shared) would carry every mount
attached beneath it to the peers and slaves of that mount's group, where destroy
cannot take them back. With ``private: true`` on the root, apply first binds the
root onto itself with private propagation; mounts beneath it land on that bind,
which has no peers. The bind is recorded in the state as ``@root:NAME`` and goes
last on destroy (an unmount propagates, so its copies in the peers go with it).
"""

from __future__ import annotations

from mountplan._kernel import Fd, MoveMountFlag, OpenTreeFlag
from mountplan._kernel import Propagation as KernelPropagation
from mountplan.model import Plan

from .attach import clone_ids
from .attrs import set_attrs
from .context import Context
from .roots import RootSet
from .state import ManagedMount, State
from .transaction import Transaction, Undo

PREFIX = "@root:"


def is_root_bind(name: str) -> bool:
    """True for the state entry of a root's private bind (plan mount names cannot start with '@')."""
    return name.startswith(PREFIX)


def make_roots_private(ctx: Context, tx: Transaction, plan: Plan, rootset: RootSet, state: State) -> list[ManagedMount]:
    """Bind each ``private`` root onto itself unless our bind is already on top; return the new entries.

    The root handle is switched to the new bind, so everything after mounts onto it.
    """
    k = ctx.backend
    made: list[ManagedMount] = []
    for spec in plan.roots:
        handle = rootset.get(spec.name)
        if not spec.private or handle is None:
            continue
        name = PREFIX + spec.name
        existing = next((m for m in state.mounts if m.name == name), None)
        if existing is not None and k.statx_mount_ids(handle.fileno()).mnt_id == existing.mnt_id:
            continue
        flags = OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC | OpenTreeFlag.RECURSIVE | OpenTreeFlag.EMPTY_PATH
        mnt: Fd = k.open_tree(handle.fileno(), "", flags)
        try:
            ids = k.statx_mount_ids(mnt.fileno())
            submounts = clone_ids(ctx, mnt, handle.identity.path, ids.mnt_id)
            tx.record(Undo(0, "mount", spec.name, "", mnt_id=ids.mnt_id, unique=ids.unique, mount=name,
                           recursive=True, submounts=submounts))
            k.move_mount(mnt.fileno(), "", handle.fileno(), "", MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH,
                         shown_target=f"{spec.name}:.")
            # Attached beneath a shared mount, the bind joined that mount's peer
            # group (the kernel shares the new tree so peers receive copies):
            # leave it now, before anything is mounted beneath it.
            set_attrs(ctx, mnt.fileno(), propagation=KernelPropagation.PRIVATE, recursive=True, shown=f"{spec.name}:.")
        except BaseException:
            mnt.close()
            raise
        handle.rebind(mnt)
        if existing is not None:
            state.mounts.remove(existing)
        made.append(ManagedMount(name=name, root=spec.name, target="", mnt_id=ids.mnt_id, unique=ids.unique,
                                 fingerprint="", recursive=True, submounts=submounts))
    return made
