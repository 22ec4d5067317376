"""The plan model: frozen data that every layer above the loader works from.

A :class:`Plan` is pure data. It never touches the kernel; the loader builds it
from YAML after validation, and the compiler turns it into steps.
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass, field

from mountplan._kernel.constants import MountAttr
from mountplan._kernel.constants import Propagation as KernelPropagation

__all__ = [
    "Attr",
    "BindSource",
    "IdMapping",
    "IdRange",
    "MountKind",
    "MountSpec",
    "MountpointKind",
    "MountpointSpec",
    "ObjectKind",
    "ObjectSpec",
    "Option",
    "Plan",
    "Propagation",
    "RootSpec",
    "SourceRef",
    "normalize_target",
]


class Attr(enum.Enum):
    """A per-mount attribute as written in a plan."""

    RO = "ro"
    NOSUID = "nosuid"
    NODEV = "nodev"
    NOEXEC = "noexec"
    NOATIME = "noatime"
    RELATIME = "relatime"
    STRICTATIME = "strictatime"
    NODIRATIME = "nodiratime"
    NOSYMFOLLOW = "nosymfollow"

    @property
    def kernel_flag(self) -> MountAttr:
        """The ``MOUNT_ATTR_*`` bit (RELATIME is the atime mode 0)."""
        return _ATTR_FLAGS[self]


_ATTR_FLAGS = {
    Attr.RO: MountAttr.RDONLY,
    Attr.NOSUID: MountAttr.NOSUID,
    Attr.NODEV: MountAttr.NODEV,
    Attr.NOEXEC: MountAttr.NOEXEC,
    Attr.NOATIME: MountAttr.NOATIME,
    Attr.RELATIME: MountAttr(0),
    Attr.STRICTATIME: MountAttr.STRICTATIME,
    Attr.NODIRATIME: MountAttr.NODIRATIME,
    Attr.NOSYMFOLLOW: MountAttr.NOSYMFOLLOW,
}

#: Attributes that select the one atime mode; at most one may be given.
ATIME_ATTRS = frozenset({Attr.NOATIME, Attr.RELATIME, Attr.STRICTATIME})


def attrs_to_kernel(attrs: frozenset[Attr]) -> MountAttr:
    """Fold plan attributes into a ``MOUNT_ATTR_*`` set."""
    flags = MountAttr(0)
    for attr in attrs:
        flags |= attr.kernel_flag
    return flags


class Propagation(enum.Enum):
    """Mount propagation as written in a plan."""

    PRIVATE = "private"
    SLAVE = "slave"
    SHARED = "shared"
    UNBINDABLE = "unbindable"

    @property
    def kernel_value(self) -> KernelPropagation:
        return KernelPropagation[self.name]


class MountKind(enum.Enum):
    FILESYSTEM = "filesystem"  # fsopen → fsconfig → fsmount
    BIND = "bind"  # open_tree(CLONE)


class MountpointKind(enum.Enum):
    DIRECTORY = "directory"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class Option:
    """One filesystem option, passed to fsconfig in plan order.

    ``value`` None is a flag (FSCONFIG_SET_FLAG); anything else is a string
    (FSCONFIG_SET_STRING). A list in the plan becomes one Option per element, in
    order, which is how overlay's ``lowerdir+`` is given.
    """

    key: str
    value: str | None = None

    def render(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """A path a mount reads from: on the host (``root`` None) or beneath a root."""

    path: str
    root: str | None = None

    def render(self) -> str:
        return self.path if self.root is None else f"{self.root}:{self.path}"


@dataclass(frozen=True, slots=True)
class IdRange:
    """One line of an id map: ``count`` ids from ``inside`` (on the filesystem) seen as ``outside``.

    The order of a user namespace's ``uid_map`` (user_namespaces(7)): ``inside``
    is the id stored on the source filesystem, ``outside`` the id a process sees
    (and writes as) through the idmapped mount.
    """

    inside: int
    outside: int
    count: int

    def render(self) -> str:
        return f"{self.inside}:{self.outside}:{self.count}"

    def map_line(self) -> str:
        """The line written to ``/proc/PID/uid_map`` (or ``gid_map``)."""
        return f"{self.inside} {self.outside} {self.count}"


@dataclass(frozen=True, slots=True)
class IdMapping:
    """An idmapped bind's mapping: a user namespace made with ``uids``/``gids``, or an existing one.

    ``userns`` names an existing user namespace (an absolute path to an nsfs file
    such as ``/proc/PID/ns/user``, or ``fd:N`` for one an embedding program
    holds open); then ``uids`` and ``gids`` are empty.
    """

    uids: tuple[IdRange, ...] = ()
    gids: tuple[IdRange, ...] = ()
    userns: str | None = None

    def render(self) -> str:
        """``uids 0:100000:65536 gids 0:100000:65536``, or ``userns /proc/1/ns/user``."""
        if self.userns is not None:
            return f"userns {self.userns}"
        return f"uids {render_ranges(self.uids)} gids {render_ranges(self.gids)}"

    def to_json(self) -> dict[str, object]:
        if self.userns is not None:
            return {"userns": self.userns}
        return {"uids": [[r.inside, r.outside, r.count] for r in self.uids],
                "gids": [[r.inside, r.outside, r.count] for r in self.gids]}


def render_ranges(ranges: tuple[IdRange, ...]) -> str:
    """``0:100000:65536,70000:0:1`` (``-`` for none)."""
    return ",".join(r.render() for r in ranges) or "-"


@dataclass(frozen=True, slots=True)
class BindSource:
    """What a bind mount clones: a host path, or a path beneath a named root.

    ``idmap`` makes the clone an idmapped mount (``MOUNT_ATTR_IDMAP``) before it
    is attached; with ``recursive`` every mount of the tree is idmapped.
    """

    source: SourceRef
    recursive: bool = True
    idmap: IdMapping | None = None


@dataclass(frozen=True, slots=True)
class MountpointSpec:
    """How to make the mountpoint when it does not exist.

    ``kind`` None means: a directory, or an empty file when a bind's source is a
    file (decided when the step runs, from the source itself).
    """

    create: bool = True
    kind: MountpointKind | None = None
    mode: int = 0o755


@dataclass(frozen=True, slots=True)
class RootSpec:
    """A named anchor directory, opened once as a dirfd. ``path`` may come at run time.

    ``private``: apply first makes the root a private bind mount of itself (undone
    by destroy), so nothing mounted beneath it propagates to peers of a shared
    mount the root lies on (runc's rootfs propagation). Without it, apply refuses
    a root on a shared mount.
    """

    name: str
    path: str | None = None
    private: bool = False


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One planned mount, with every default already applied by the loader."""

    name: str
    root: str
    target: str  # normalised, relative, never "" / absolute / climbing (see normalize_target)
    fs_type: str | None = None  # set for filesystem mounts
    source: str | None = None  # the fs context's "source" string, shown in mountinfo
    options: tuple[Option, ...] = ()
    bind: BindSource | None = None
    attrs: frozenset[Attr] = frozenset()
    propagation: Propagation = Propagation.PRIVATE
    mountpoint: MountpointSpec = field(default_factory=MountpointSpec)
    after: tuple[str, ...] = ()

    @property
    def kind(self) -> MountKind:
        return MountKind.BIND if self.bind is not None else MountKind.FILESYSTEM

    @property
    def kernel_attrs(self) -> MountAttr:
        return attrs_to_kernel(self.attrs)

    def source_refs(self) -> tuple[SourceRef, ...]:
        """Every path this mount reads from (bind source, overlay layers).

        The compiler orders a mount after any planned mount that covers one of these.
        """
        refs: list[SourceRef] = []
        if self.bind is not None:
            refs.append(self.bind.source)
        if self.fs_type == "overlay":
            for opt in self.options:
                if opt.value is None or opt.key not in OVERLAY_PATH_KEYS:
                    continue
                refs.extend(overlay_layer_refs(opt, self.root))
        return tuple(refs)


#: overlay options whose values are paths (relative ones are beneath the mount's root).
OVERLAY_PATH_KEYS = frozenset({"lowerdir", "lowerdir+", "upperdir", "workdir", "datadir+"})


def overlay_layer_refs(opt: Option, root: str) -> list[SourceRef]:
    """Split an overlay path option into SourceRefs (legacy ``lowerdir`` is ``a:b``)."""
    assert opt.value is not None
    parts = opt.value.split(":") if opt.key == "lowerdir" else [opt.value]
    out = []
    for part in parts:
        if part.startswith("/"):
            out.append(SourceRef(part))
        else:
            out.append(SourceRef(normalize_target(part), root))
    return out


class ObjectKind(enum.Enum):
    """What a planned object is (``objects[]`` in a plan)."""

    DIRECTORY = "directory"
    FILE = "file"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """A directory, empty file or symlink that apply creates beneath a root (and destroy removes).

    ``mode`` is exact (applied with fchmod, whatever the umask); ``uid``/``gid``
    None leave the owner as created. ``link`` is a symlink's target text, stored
    as written and never followed by mountplan.
    """

    name: str
    root: str
    path: str  # normalised like a mount target
    kind: ObjectKind
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    link: str | None = None

    def describe(self) -> str:
        """``symlink -> /proc/self/fd``, ``directory 0755``, ``file 0644 uid=0``."""
        if self.kind is ObjectKind.SYMLINK:
            return f"symlink -> {self.link}"
        text = f"{self.kind.value} {self.mode:04o}" if self.mode is not None else self.kind.value
        if self.uid is not None:
            text += f" uid={self.uid}"
        if self.gid is not None:
            text += f" gid={self.gid}"
        return text


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated plan. ``mounts`` and ``objects`` keep plan order; the compiler decides run order."""

    name: str
    roots: tuple[RootSpec, ...]
    mounts: tuple[MountSpec, ...]
    version: int = 1
    source_file: str | None = None
    objects: tuple[ObjectSpec, ...] = ()

    def object(self, name: str) -> ObjectSpec:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(name)

    def root(self, name: str) -> RootSpec:
        for root in self.roots:
            if root.name == name:
                return root
        raise KeyError(name)

    def mount(self, name: str) -> MountSpec:
        for mount in self.mounts:
            if mount.name == name:
                return mount
        raise KeyError(name)


def normalize_target(path: str) -> str:
    """Normalise a root-relative path: ``a//b/./c/`` → ``a/b/c``.

    Raises ValueError for absolute paths, empty paths and paths that climb out
    with ``..``; the loader turns that into a diagnostic. Symlinks are not
    considered here: they are refused at run time by openat2.
    """
    if not path or path.startswith("/"):
        raise ValueError(f"target {path!r} must be a relative path beneath its root")
    if ".." in path.split("/"):
        raise ValueError(f"target {path!r} has a '..' component; targets may not climb")
    norm = posixpath.normpath(path)
    if norm == ".":
        raise ValueError(f"target {path!r} names the root itself")
    if "\0" in norm:
        raise ValueError(f"target {path!r} contains a NUL byte")
    return norm
