"""Step chains: the steps of each mount, in order (fsopen … fsmount or open_tree, then attach), for apply and destroy."""

from __future__ import annotations

from mountplan.compile_steps import Step, StepArgs, StepKind, new_step
from mountplan.model import Attr, MountSpec, Option, Propagation, render_ranges

__all__ = ["apply_chains", "destroy_chains"]

_Head = list[tuple[str, StepKind, StepArgs]]  # (id suffix, kind, args) per step


def apply_chains(mounts: tuple[MountSpec, ...]) -> dict[str, list[Step]]:
    """Each mount's apply steps by mount name (a repeated name keeps the last).

    A filesystem mount starts fsopen, fsconfig ``source=``, one fsconfig per option,
    fsconfig_create, fsmount; a bind starts open_tree, mount_setattr; both end
    mkdir, resolve_target, move_mount, set_propagation.
    """
    # Mounts mostly repeat their fs type, options, attrs, mode and propagation:
    # build each distinct filesystem head (id suffixes, kinds, args) and argument
    # tuple once, not once per mount, which also leaves the cyclic collector
    # fewer tuples to scan.
    chains: dict[str, list[Step]] = {}
    attrs_args: dict[frozenset[Attr], StepArgs] = {}
    filesystem_heads: dict[tuple[str | None, str | None, tuple[Option, ...], frozenset[Attr]], _Head] = {}
    tail_suffixes: dict[int, tuple[str, ...]] = {}
    mode_args: dict[int, StepArgs] = {}
    propagation_args: dict[Propagation, StepArgs] = {}
    for m in mounts:
        attrs = attrs_args.get(m.attrs)
        if attrs is None:
            attrs = attrs_args[m.attrs] = (("attrs", ",".join(sorted(a.value for a in m.attrs)) or "-"),)
        head: _Head | None
        if m.bind is None:
            key = (m.fs_type, m.source, m.options, m.attrs)
            head = filesystem_heads.get(key)
            if head is None:
                head = filesystem_heads[key] = _filesystem_head(m, attrs)
        else:
            source = (("source", m.bind.source.render()), ("recursive", str(m.bind.recursive).lower()))
            head = [
                ("#00:open_tree", StepKind.OPEN_TREE, source),
                ("#01:mount_setattr", StepKind.SET_ATTR, attrs),
            ]
            if m.bind.idmap is not None:
                head = _idmap_head(m, source, attrs)
        tail = tail_suffixes.get(len(head))
        if tail is None:
            tail = tail_suffixes[len(head)] = _tail_suffixes(len(head))
        mode = mode_args.get(m.mountpoint.mode)
        if mode is None:
            mode = mode_args[m.mountpoint.mode] = (("mode", oct(m.mountpoint.mode)),)
        propagation = propagation_args.get(m.propagation)
        if propagation is None:
            propagation = propagation_args[m.propagation] = (("propagation", m.propagation.value),)
        name, root = m.name, m.root
        target = (("target", f"{root}:{m.target}"),)
        chain = [new_step(name + suffix, kind, name, root, args) for suffix, kind, args in head]
        chain.append(new_step(name + tail[0], StepKind.ENSURE_MOUNTPOINT, name, root, target + mode))
        chain.append(new_step(name + tail[1], StepKind.RESOLVE_TARGET, name, root, target))
        chain.append(new_step(name + tail[2], StepKind.JOURNAL_ID, name, root, ()))
        chain.append(new_step(name + tail[3], StepKind.MOVE_MOUNT, name, root, target))
        chain.append(new_step(name + tail[4], StepKind.VERIFY, name, root, target))
        chain.append(new_step(name + tail[5], StepKind.SET_PROPAGATION, name, root, propagation))
        chains[name] = chain
    return chains


def _idmap_head(m: MountSpec, source: StepArgs, attrs: StepArgs) -> _Head:
    """userns, open_tree, then one mount_setattr that sets the attributes and ``MOUNT_ATTR_IDMAP`` on the clone.

    The mapping is set on the detached clone, before move_mount: the kernel
    refuses it on an attached mount and on one already idmapped.
    """
    assert m.bind is not None and m.bind.idmap is not None
    idmap = m.bind.idmap
    if idmap.userns is not None:
        userns: StepArgs = (("userns", idmap.userns),)
    else:
        userns = (("uid_map", render_ranges(idmap.uids)), ("gid_map", render_ranges(idmap.gids)))
    return [
        ("#00:userns", StepKind.USERNS, userns),
        ("#01:open_tree", StepKind.OPEN_TREE, source),
        ("#02:mount_setattr", StepKind.SET_ATTR, (*attrs, ("idmap", "userns"))),
    ]


def _filesystem_head(m: MountSpec, attrs: StepArgs) -> _Head:
    assert m.fs_type is not None
    kinds_args: list[tuple[StepKind, StepArgs]] = [
        (StepKind.FSOPEN, (("type", m.fs_type),)),
        (StepKind.FSCONFIG, (("option", f"source={m.source or m.fs_type}"),)),
        *((StepKind.FSCONFIG, (("option", opt.render()),)) for opt in m.options),
        (StepKind.CREATE, ()),
        (StepKind.FSMOUNT, attrs),
    ]
    return [(f"#{i:02d}:{kind.value}", kind, args) for i, (kind, args) in enumerate(kinds_args)]


def _tail_suffixes(start: int) -> tuple[str, ...]:
    kinds = (
        StepKind.ENSURE_MOUNTPOINT,
        StepKind.RESOLVE_TARGET,
        StepKind.JOURNAL_ID,
        StepKind.MOVE_MOUNT,
        StepKind.VERIFY,
        StepKind.SET_PROPAGATION,
    )
    return tuple(f"#{i:02d}:{kind.value}" for i, kind in enumerate(kinds, start))


def destroy_chains(mounts: tuple[MountSpec, ...]) -> dict[str, list[Step]]:
    """Each mount's destroy steps by mount name: unmount, then remove the mountpoint."""
    chains: dict[str, list[Step]] = {}
    for m in mounts:
        target = (("target", f"{m.root}:{m.target}"),)
        chains[m.name] = [
            new_step(f"{m.name}#00:unmount", StepKind.UNMOUNT, m.name, m.root, target),
            new_step(f"{m.name}#01:rmdir", StepKind.REMOVE_MOUNTPOINT, m.name, m.root, target),
        ]
    return chains
