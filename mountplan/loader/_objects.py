"""Planned objects (``objects:``) and minimal /dev directories (``devices:``): checks and model building.

A ``devices`` entry is shorthand: it expands here into ordinary mounts and
objects, so the compiler, the engine and every rendering see exactly what will
be made (``mountplan steps`` shows each bind, symlink and devpts option).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mountplan.loader._schema import target_pattern
from mountplan.model import (
    Attr,
    BindSource,
    MountpointKind,
    MountpointSpec,
    MountSpec,
    ObjectKind,
    ObjectSpec,
    Option,
    Propagation,
    SourceRef,
    normalize_target,
)

if TYPE_CHECKING:
    from mountplan.loader._semantic import _Checker
    from mountplan.loader._yaml import Path

__all__ = ["build_devices", "build_objects", "check_objects", "device_entries"]

_KINDS = ("directory", "file", "symlink")
_DEFAULT_MODES = {"directory": 0o755, "file": 0o644}

#: The host device nodes a minimal /dev binds.
DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
#: Its symlinks: name -> target text.
DEVICE_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
_NOSUID_NOEXEC = frozenset({Attr.NOSUID, Attr.NOEXEC})


def device_entries(name: str, target: str) -> Iterator[tuple[str, str, str]]:
    """(name, target, what) of every mount and object a ``devices`` entry expands into."""
    yield name, target, "mount"
    for node in DEVICE_NODES:
        yield f"{name}-{node}", f"{target}/{node}", "mount"
    for link, _ in DEVICE_LINKS:
        yield f"{name}-{link}", f"{target}/{link}", "symlink"
    yield f"{name}-pts", f"{target}/pts", "mount"
    yield f"{name}-shm", f"{target}/shm", "mount"


def build_devices(root: str, name: str, target: str, propagation: Propagation) -> tuple[list[MountSpec], list[ObjectSpec]]:
    """The mounts and objects of one minimal /dev (the ``devices`` entry already checked)."""
    target = normalize_target(target)
    # The tmpfs itself is nodev; each node bind is a mount of its own without
    # nodev (a device node works only on a mount that allows it), and devpts too:
    # /dev/ptmx is a symlink to pts/ptmx, a node on the devpts mount.
    mounts = [
        MountSpec(name, root, target, fs_type="tmpfs", source="dev",
                  options=(Option("size", "64k"), Option("mode", "0755")),
                  attrs=frozenset({Attr.NOSUID, Attr.NODEV, Attr.NOEXEC}), propagation=propagation)
    ]
    for node in DEVICE_NODES:
        mounts.append(
            MountSpec(f"{name}-{node}", root, f"{target}/{node}", bind=BindSource(SourceRef(f"/dev/{node}"), False),
                      attrs=_NOSUID_NOEXEC, propagation=propagation,
                      mountpoint=MountpointSpec(kind=MountpointKind.FILE, mode=0o666))
        )
    # A private instance (newinstance), never the host's ptys. No gid=: the tty
    # group is rarely mapped in a user namespace, where the kernel refuses an
    # unmapped gid; the ptys then belong to the caller's group.
    mounts.append(
        MountSpec(f"{name}-pts", root, f"{target}/pts", fs_type="devpts", source="devpts",
                  options=(Option("newinstance"), Option("ptmxmode", "0666"), Option("mode", "0620")),
                  attrs=_NOSUID_NOEXEC, propagation=propagation)
    )
    mounts.append(
        MountSpec(f"{name}-shm", root, f"{target}/shm", fs_type="tmpfs", source="shm",
                  options=(Option("mode", "1777"),), attrs=frozenset({Attr.NOSUID, Attr.NODEV}), propagation=propagation)
    )
    objects = [
        ObjectSpec(f"{name}-{link}", root, f"{target}/{link}", ObjectKind.SYMLINK, link=text)
        for link, text in DEVICE_LINKS
    ]
    return mounts, objects


def build_objects(entries: list[dict[str, Any]], root_of: Any) -> list[ObjectSpec]:
    """ObjectSpecs of checked ``objects`` entries; ``root_of(entry)`` gives each one's root."""
    out = []
    for entry in entries:
        kind = next(k for k in _KINDS if k in entry)
        spec = entry[kind] or {}
        mode = int(spec["mode"], 8) if "mode" in spec else _DEFAULT_MODES.get(kind)
        out.append(
            ObjectSpec(
                name=entry["name"], root=root_of(entry), path=normalize_target(entry["path"]), kind=ObjectKind(kind),
                mode=mode, uid=spec.get("uid"), gid=spec.get("gid"), link=spec.get("target"),
            )
        )
    return out


def check_objects(checker: _Checker, names: dict[str, int], targets: dict[tuple[str, str], str]) -> None:
    """Names, roots and paths of ``objects`` and ``devices`` against each other and the mounts.

    ``names`` are the mount names, ``targets`` the mounts' (root, target) -> label.
    """
    from mountplan.loader._semantic import effective_root

    doc, data = checker.doc, checker.data
    taken: dict[str, str] = {name: f"mount {name!r}" for name in names}
    # (root, path) -> (label, kind) of every object, planned or expanded.
    paths: dict[tuple[str, str], tuple[str, str]] = {}
    mount_targets = dict(targets)

    def claim_name(pos_path: Path, name: object, label: str) -> None:
        if not isinstance(name, str):
            return
        if name in taken:
            checker.report(doc.value_position(pos_path), f"{label}: name {name!r} is already used by {taken[name]}")
        else:
            taken[name] = label

    devices = data.get("devices")
    for index, entry in enumerate(devices if isinstance(devices, list) else []):
        if not isinstance(entry, dict):
            continue
        base: Path = ("devices", index)
        checker.check_root_name((*base, "root"), entry.get("root"))
        name, target, root = entry.get("name"), entry.get("target"), effective_root(data, entry)
        label = f"device directory {name!r}"
        norm = _normal(target)
        if not isinstance(name, str) or norm is None or root is None:
            continue
        for sub, sub_target, what in device_entries(name, norm):
            claim_name((*base, "name"), sub, f"{label} (its {what} {sub!r})")
            key = (root, sub_target)
            if what == "mount":
                if key in mount_targets:
                    checker.report(doc.value_position((*base, "target")),
                                   f"{label}: its mount at {sub_target!r} has the same target as {mount_targets[key]}")
                mount_targets[key] = f"{label} (mount {sub!r})"
            else:
                paths[key] = (f"{label} (symlink {sub!r})", "symlink")

    objects = data.get("objects")
    for index, entry in enumerate(objects if isinstance(objects, list) else []):
        if not isinstance(entry, dict):
            continue
        base = ("objects", index)
        name = entry.get("name")
        label = f"object {name!r}" if isinstance(name, str) else f"object #{index + 1}"
        claim_name((*base, "name"), name, label)
        checker.check_root_name((*base, "root"), entry.get("root"))
        root = effective_root(data, entry)
        if root is None and len(checker.roots) > 1:
            checker.report(doc.value_position(base), f"{label} has no root; set 'root' on it or 'defaults.root'{checker.known_roots()}")
        path = entry.get("path")
        if not isinstance(path, str) or not path or target_pattern().search(path) is None:
            continue  # the schema reported it
        try:
            norm = normalize_target(path)
        except ValueError as exc:
            checker.report(doc.value_position((*base, "path")), str(exc).replace("target", "path", 1))
            continue
        kinds = [k for k in _KINDS if k in entry]
        if root is None or len(kinds) != 1:
            continue
        pos = doc.value_position((*base, "path"))
        if (root, norm) in paths:
            checker.report(pos, f"{label} has the same path {norm!r} in root {root!r} as {paths[(root, norm)][0]}")
            continue
        paths[(root, norm)] = (label, kinds[0])
        on_mount = mount_targets.get((root, norm))
        if on_mount is not None and kinds[0] == "symlink":
            checker.report(pos, f"{label} is a symlink at {norm!r}, where {on_mount} mounts; a mount never goes on a symlink")
        elif on_mount is not None and kinds[0] == "file" and not _is_bind_target(data, root, norm):
            checker.report(pos, f"{label} is a file at {norm!r}, where {on_mount} mounts a filesystem, which needs a directory")

    # Nothing may lie beneath a symlink or a file: the kernel would refuse it, or
    # (a symlink) resolution beneath the root refuses to cross it.
    leaves = {key: info for key, info in paths.items() if info[1] != "directory"}
    if not leaves:
        return
    for key, (label, _) in sorted(paths.items()):
        _check_not_beneath(checker, key, label, leaves, _object_position(checker, label))
    for key, label in sorted(mount_targets.items()):
        _check_not_beneath(checker, key, label, leaves, _mount_position(checker, label))


def _check_not_beneath(checker: _Checker, key: tuple[str, str], label: str,
                       leaves: dict[tuple[str, str], tuple[str, str]], pos_path: Path | None) -> None:
    root, path = key
    parent = posixpath.dirname(path)
    while parent:
        leaf = leaves.get((root, parent))
        if leaf is not None:
            pos = checker.doc.value_position(pos_path) if pos_path is not None else checker.doc.value_position(())
            checker.report(pos, f"{label} at {path!r} lies beneath {leaf[0]}, a {leaf[1]}; nothing can be made inside one")
            return
        parent = posixpath.dirname(parent)


def _object_position(checker: _Checker, label: str) -> Path | None:
    objects = checker.data.get("objects")
    for index, entry in enumerate(objects if isinstance(objects, list) else []):
        if isinstance(entry, dict) and label == f"object {entry.get('name')!r}":
            return ("objects", index, "path")
    return None


def _mount_position(checker: _Checker, label: str) -> Path | None:
    for index, mount in checker.mounts:
        if label == checker.label(index, mount):
            return ("mounts", index, "target")
    return None


def _is_bind_target(data: dict[str, Any], root: str, path: str) -> bool:
    from mountplan.loader._semantic import effective_root

    for mount in data.get("mounts") or []:
        if isinstance(mount, dict) and "bind" in mount and effective_root(data, mount) == root:
            target = mount.get("target")
            if isinstance(target, str) and _normal(target) == path:
                return True
    return False


def _normal(path: object) -> str | None:
    if not isinstance(path, str):
        return None
    try:
        return normalize_target(path)
    except ValueError:
        return None
