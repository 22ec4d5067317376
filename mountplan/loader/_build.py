"""Model construction: a validated document becomes a frozen Plan with every default applied."""

from __future__ import annotations

from typing import Any

from mountplan.loader._semantic import effective_root
from mountplan.loader._yaml import Document, Path
from mountplan.model import (
    ATIME_ATTRS,
    Attr,
    BindSource,
    IdMapping,
    IdRange,
    MountpointKind,
    MountpointSpec,
    MountSpec,
    ObjectSpec,
    Option,
    Plan,
    Propagation,
    RootSpec,
    SourceRef,
    normalize_target,
)

__all__ = ["build_plan"]

# Plain dict lookups: Enum.__call__ is slow enough to matter for 10,000 mounts.
_ATTRS = {attr.value: attr for attr in Attr}
_PROPAGATIONS = {propagation.value: propagation for propagation in Propagation}
_DEFAULT_MOUNTPOINT = MountpointSpec()


def build_plan(doc: Document, filename: str) -> Plan:
    """Build the Plan; ``doc`` must have passed the schema and the semantic checks."""
    data: dict[str, Any] = doc.data
    defaults: dict[str, Any] = data.get("defaults") or {}
    default_attrs = frozenset(_ATTRS[name] for name in defaults.get("attrs", []))
    default_propagation = _PROPAGATIONS[defaults.get("propagation", "private")]
    roots = tuple(RootSpec(name, spec.get("path"), bool(spec.get("private", False))) for name, spec in data["roots"].items())
    mounts = tuple(
        _build_mount(doc, ("mounts", index), mount, data, default_attrs, default_propagation)
        for index, mount in enumerate(data["mounts"])
    )
    objects: tuple[ObjectSpec, ...] = ()
    if data.get("devices") or data.get("objects"):
        mounts, objects = _build_objects(data, mounts, default_propagation)
    return Plan(
        name=data["name"], roots=roots, mounts=mounts, version=int(data["version"]), source_file=filename,
        objects=objects,
    )


def _build_objects(
    data: dict[str, Any], mounts: tuple[MountSpec, ...], propagation: Propagation
) -> tuple[tuple[MountSpec, ...], tuple[ObjectSpec, ...]]:
    """The plan's objects, and its mounts plus those its ``devices`` entries expand into."""
    from mountplan.loader._objects import build_devices, build_objects

    def root_of(entry: dict[str, Any]) -> str:
        root = effective_root(data, entry)
        assert root is not None
        return root

    all_mounts = list(mounts)
    objects: list[ObjectSpec] = []
    for entry in data.get("devices") or []:
        more_mounts, more_objects = build_devices(root_of(entry), entry["name"], entry["target"], propagation)
        all_mounts += more_mounts
        objects += more_objects
    objects += build_objects(data.get("objects") or [], root_of)
    return tuple(all_mounts), tuple(objects)


def _build_mount(
    doc: Document,
    path: Path,
    mount: dict[str, Any],
    data: dict[str, Any],
    default_attrs: frozenset[Attr],
    default_propagation: Propagation,
) -> MountSpec:
    root = effective_root(data, mount)
    assert root is not None
    own_attrs = frozenset(_ATTRS[name] for name in mount.get("attrs", ()))
    attrs = own_attrs
    if mount.get("inherit_attrs", True):
        inherited = default_attrs - ATIME_ATTRS if own_attrs & ATIME_ATTRS else default_attrs
        attrs = inherited | own_attrs
    bind = None
    if "bind" in mount:
        spec = mount["bind"]
        source_root = spec.get("root")
        source_path = spec["path"] if source_root is None else normalize_target(spec["path"])
        idmap = _build_idmap(spec["idmap"]) if "idmap" in spec else None
        bind = BindSource(SourceRef(source_path, source_root), spec.get("recursive", True), idmap)
    mountpoint = _DEFAULT_MOUNTPOINT
    if "mountpoint" in mount:
        spec = mount["mountpoint"]
        kind = spec.get("kind")
        mountpoint = MountpointSpec(
            create=spec.get("create", True),
            kind=None if kind is None else MountpointKind(kind),
            mode=int(spec.get("mode", "0755"), 8),
        )
    return MountSpec(
        name=mount["name"],
        root=root,
        target=normalize_target(mount["target"]),
        fs_type=mount.get("type"),
        source=mount.get("source"),
        options=_build_options(doc, (*path, "options"), mount["options"]) if "options" in mount else (),
        bind=bind,
        attrs=attrs,
        propagation=_PROPAGATIONS[mount["propagation"]] if "propagation" in mount else default_propagation,
        mountpoint=mountpoint,
        after=tuple(mount.get("after", ())),
    )


def _build_idmap(spec: dict[str, Any]) -> IdMapping:
    if "userns" in spec:
        return IdMapping(userns=spec["userns"])
    uids = tuple(IdRange(*line) for line in spec["uids"])
    gids = tuple(IdRange(*line) for line in spec["gids"]) if "gids" in spec else uids
    return IdMapping(uids, gids)


def _build_options(doc: Document, path: Path, options: dict[str, Any]) -> tuple[Option, ...]:
    built: list[Option] = []
    for key, value in options.items():
        if value is True:
            built.append(Option(key))
        elif value is False:
            continue
        elif isinstance(value, list):
            built.extend(
                Option(key, _option_text(doc, (*path, key, i), item)) for i, item in enumerate(value)
            )
        else:
            built.append(Option(key, _option_text(doc, (*path, key), value)))
    return tuple(built)


def _option_text(doc: Document, path: Path, value: object) -> str:
    # Numbers go to the kernel exactly as written: `mode: 01777` must stay octal text.
    if isinstance(value, str):
        return value
    return doc.raw.get(path, str(value))
