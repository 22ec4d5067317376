"""Plan builders and sandbox checks shared by the engine's fault, kill, lock and busy tests."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from mountplan.model import (
    Attr,
    BindSource,
    MountpointKind,
    MountpointSpec,
    MountSpec,
    Option,
    Plan,
    Propagation,
    RootSpec,
    SourceRef,
)
from mountplan.testing import mount_table_snapshot

ROOT = "r"


def tmpfs(name: str, target: str, *options: Option, attrs: frozenset[Attr] = frozenset(), **kw: object) -> MountSpec:
    """A tmpfs mount spec beneath root ``r``."""
    return MountSpec(name=name, root=ROOT, target=target, fs_type="tmpfs", source=name, options=options, attrs=attrs, **kw)  # type: ignore[arg-type]


def bind(name: str, target: str, source: SourceRef, *, recursive: bool = True, **kw: object) -> MountSpec:
    """A bind mount spec beneath root ``r``."""
    return MountSpec(name=name, root=ROOT, target=target, bind=BindSource(source, recursive), **kw)  # type: ignore[arg-type]


def all_kinds_plan(host_dir: str, name: str = "faults", *, overlay: bool = True) -> Plan:
    """A 34-mount plan (32 without ``overlay``) using every kind of mount the engine makes.

    ``host_dir`` must exist with a subdirectory ``sub`` (a recursive bind of it
    should carry a mount on ``sub``); the root must hold an empty directory
    ``lower`` (an overlay layer outside any planned mount).
    """
    nested = ["data/l1", "data/l1/l2", "data/l1/l2/l3", "data/l1/l2/l3/l4"]
    mounts: list[MountSpec] = [
        tmpfs("data", "data", Option("size", "8m"), Option("mode", "0755"), attrs=frozenset({Attr.NOSUID, Attr.NODEV})),
        tmpfs("l1", nested[0], Option("size", "4m")),
        tmpfs("l2", nested[1], Option("nr_inodes", "1000")),
        tmpfs("l3", nested[2], attrs=frozenset({Attr.NOATIME})),
        MountSpec(name="l4-ramfs", root=ROOT, target=nested[3], fs_type="ramfs", source="ramfs"),
        tmpfs("l5", "data/l1/l2/l3/l4/l5", Option("mode", "1777")),
        MountSpec(
            name="proc", root=ROOT, target="proc", fs_type="proc", source="proc",
            attrs=frozenset({Attr.NOSUID, Attr.NOEXEC, Attr.NODEV}),
        ),
        # Directories created in the root itself (not inside a planned tmpfs): rollback must rmdir them.
        tmpfs("deep", "deep/a/b/c", Option("size", "1m")),
        bind("host-rec", "host/rec", SourceRef(host_dir), recursive=True, attrs=frozenset({Attr.RO})),
        bind("host-flat", "host/flat", SourceRef(host_dir), recursive=False, attrs=frozenset({Attr.NOSUID})),
        # A file bind of /dev/null onto an empty file it creates in the root, and one inside a tmpfs.
        bind("null-file", "devnull", SourceRef("/dev/null"), recursive=False),
        bind(
            "null-in-tmpfs", "data/null", SourceRef("/dev/null"), recursive=False,
            mountpoint=MountpointSpec(kind=MountpointKind.FILE, mode=0o644),
        ),
        # Root-relative binds whose source lies inside planned tmpfs mounts.
        bind("view-l1", "view/l1", SourceRef("data/l1", ROOT), recursive=True, attrs=frozenset({Attr.RO, Attr.NOATIME})),
        bind("view-data-flat", "view/data-flat", SourceRef("data", ROOT), recursive=False),
        tmpfs("shared", "prop/shared", propagation=Propagation.SHARED),
        bind("slave", "prop/slave", SourceRef("prop/shared", ROOT), recursive=False, propagation=Propagation.SLAVE),
        tmpfs("unbindable", "prop/unbindable", propagation=Propagation.UNBINDABLE),
    ]
    for i in range(15):
        # m00..m07 are parents of m08..m14, so only mounts with no children are read-only.
        attrs = frozenset({Attr.RO}) if i >= 8 and i % 2 == 0 else frozenset({Attr.NOSUID, Attr.NOATIME}) if i % 3 == 1 else frozenset()
        parent = "many" if i < 8 else f"many/m{i - 8:02d}"
        mounts.append(tmpfs(f"m{i:02d}", f"{parent}/m{i:02d}", Option("size", f"{i + 1}m"), attrs=attrs))
    if overlay:
        # Last in run order, so a fault in almost any call finds the overlay not yet made.
        mounts += [
            tmpfs("ovl", "ovl", Option("size", "4m")),
            MountSpec(
                name="merged", root=ROOT, target="merged", fs_type="overlay", source="overlay",
                options=(
                    Option("lowerdir+", "lower"),
                    Option("lowerdir+", "data/l1/l2"),
                    Option("upperdir", "ovl/upper"),
                    Option("workdir", "ovl/work"),
                ),
                attrs=frozenset({Attr.NOSUID}),
            ),
        ]
    return Plan(name=name, roots=(RootSpec(ROOT),), mounts=tuple(mounts))


def tmpfs_plan(count: int, name: str = "bench", *, fanout: int = 0) -> Plan:
    """``count`` tmpfs mounts beneath root ``r``; with ``fanout`` > 0 every mount nests in an earlier one."""
    mounts = []
    targets: list[str] = []
    for i in range(count):
        if fanout and i >= fanout:
            target = f"{targets[(i - fanout) // fanout]}/t{i:05d}"
        else:
            target = f"t{i:05d}"
        targets.append(target)
        mounts.append(tmpfs(f"t{i:05d}", target, Option("size", "1m")))
    return Plan(name=name, roots=(RootSpec(ROOT),), mounts=tuple(mounts))


def kill_plan_yaml(host_dir: str, name: str = "killme") -> str:
    """A 36-mount YAML plan (tmpfs, nested tmpfs, host and root-relative binds) for the SIGKILL tests."""
    lines = ["version: 1", f"name: {name}", "roots:", "  r: {}", "mounts:"]

    def add(text: str) -> None:
        lines.extend("  " + line for line in text.strip("\n").splitlines())

    add("- {name: base, target: base, type: tmpfs, options: {size: 8m}}")
    path = "base"
    for i in range(6):
        path = f"{path}/n{i}"
        add(f"- {{name: n{i}, target: {path}, type: tmpfs, attrs: [nosuid]}}")
    for i in range(20):
        add(f"- {{name: t{i:02d}, target: dirs/d{i % 4}/t{i:02d}, type: tmpfs, options: {{mode: '0755'}}}}")
    add(f"- {{name: hostbind, target: host/rec, bind: {{path: {host_dir}, recursive: true}}, attrs: [ro]}}")
    add(f"- {{name: hostflat, target: host/flat, bind: {{path: {host_dir}, recursive: false}}}}")
    add("- {name: devnull, target: devnull, bind: {path: /dev/null, recursive: false}}")
    for i in range(6):
        add(f"- {{name: view{i}, target: views/v{i}, bind: {{root: r, path: base/n0}}, attrs: [ro]}}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What must be identical before and after a transaction is undone."""

    table: tuple[str, ...]
    files: tuple[str, ...]
    fds: tuple[str, ...]


def tree(path: str) -> tuple[str, ...]:
    """Every entry beneath ``path`` (relative, with a trailing ``/`` for directories), sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        out.extend(os.path.normpath(os.path.join(rel, d)) + "/" for d in dirnames)
        out.extend(os.path.normpath(os.path.join(rel, f)) for f in filenames)
    return tuple(sorted(out))


def snapshot(*dirs: str) -> Snapshot:
    """Mount table, file trees of ``dirs`` and open fds of this process."""
    files: list[str] = []
    for d in dirs:
        files.extend(f"{d}:{entry}" for entry in tree(d))
    return Snapshot(tuple(mount_table_snapshot()), tuple(files), tuple(sorted(os.listdir("/proc/self/fd"))))


def diff(before: Snapshot, after: Snapshot) -> str:
    """A readable difference of two snapshots ('' when equal)."""
    out: list[str] = []
    for field in ("table", "files", "fds"):
        a, b = set(getattr(before, field)), set(getattr(after, field))
        out += [f"{field} + {x}" for x in sorted(b - a)] + [f"{field} - {x}" for x in sorted(a - b)]
    return "\n".join(out)


def prepare_host_dir(host_dir: str) -> None:
    """Give ``host_dir`` a file and a ``sub`` directory with a tmpfs on it (call inside the sandbox)."""
    os.makedirs(os.path.join(host_dir, "sub"), exist_ok=True)
    with open(os.path.join(host_dir, "file"), "w") as f:
        f.write("host\n")
    subprocess.run(["mount", "-t", "tmpfs", "hostsub", os.path.join(host_dir, "sub")], check=True)
