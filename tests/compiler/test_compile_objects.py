"""The objects pass: objects ordered with mounts, their step chains, destroy reversed, impossible layouts refused."""

from __future__ import annotations

import pytest

from mountplan import loader
from mountplan.compiler import StepKind, compile_apply, compile_destroy
from mountplan.drawing import render_dot, render_mermaid
from mountplan.errors import CompileError
from mountplan.model import MountSpec, ObjectKind, ObjectSpec, Plan, RootSpec


def _tmpfs(name: str, target: str) -> MountSpec:
    return MountSpec(name=name, root="r", target=target, fs_type="tmpfs")


def _plan(*objects: ObjectSpec, mounts: tuple[MountSpec, ...] = ()) -> Plan:
    return Plan(name="t", roots=(RootSpec("r"),), mounts=mounts, objects=objects)


# Objects listed first and mounts last in plan order, so only the edges can put them right.
LAYOUT = _plan(
    ObjectSpec("stamp", "r", "work/sub/stamp", ObjectKind.FILE, mode=0o644, uid=0, gid=0),
    ObjectSpec("dev-fd", "r", "dev/fd", ObjectKind.SYMLINK, link="/proc/self/fd"),
    ObjectSpec("sub", "r", "work/sub", ObjectKind.DIRECTORY, mode=0o700),
    ObjectSpec("work", "r", "work", ObjectKind.DIRECTORY, mode=0o755),
    mounts=(_tmpfs("work-mnt", "work"), _tmpfs("sub-data", "work/sub/data"), _tmpfs("dev", "dev")),
)


def _position(order: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(order)}


def test_objects_are_ordered_with_the_mounts() -> None:
    """A symlink after the tmpfs it lies in; a mount on a planned directory after it; nested objects after theirs."""
    at = _position(compile_apply(LAYOUT).mount_order)
    assert at["dev"] < at["dev-fd"]
    assert at["work"] < at["work-mnt"] < at["sub"] < at["stamp"]  # sub lies in the mount on work
    assert at["sub"] < at["sub-data"]


def test_destroy_runs_the_same_edges_backwards() -> None:
    """Destroy removes the symlink before unmounting its tmpfs and unmounts before removing the directory under it."""
    at = _position(compile_destroy(LAYOUT).mount_order)
    assert at["dev-fd"] < at["dev"] and at["work-mnt"] < at["work"] and at["stamp"] < at["sub"]
    assert [s.kind for s in compile_destroy(LAYOUT).chain("dev-fd")] == [StepKind.UNLINKAT]


def test_object_chains_show_every_syscall() -> None:
    """resolve_parent, then the creating call, fchown when an owner is planned, fchmod when a mode is."""
    compiled = compile_apply(LAYOUT)
    assert [s.kind for s in compiled.chain("stamp")] == [
        StepKind.RESOLVE_PARENT, StepKind.CREATE_FILE, StepKind.FCHOWN, StepKind.FCHMOD,
    ]
    assert [s.kind for s in compiled.chain("dev-fd")] == [StepKind.RESOLVE_PARENT, StepKind.SYMLINKAT]
    assert ("link", "/proc/self/fd") in compiled.chain("dev-fd")[1].args
    assert all(s.kind.mutating for s in compiled.chain("sub"))


def test_graphs_label_objects() -> None:
    """dot and mermaid show each object with its path and what it is."""
    compiled = compile_apply(LAYOUT)
    assert "symlink -> /proc/self/fd" in render_dot(compiled)
    assert "directory 0700" in render_mermaid(compiled)


def test_devices_expand_into_visible_steps() -> None:
    """A two-line devices entry compiles into the tmpfs, six binds, devpts, shm and five symlinks, in order."""
    plan = loader.load_text(
        "version: 1\nname: d\nroots: {input: {}}\nmounts: []\ndevices:\n  - {name: dev, target: dev}\n"
    )
    compiled = compile_apply(plan)
    at = _position(compiled.mount_order)
    assert len(compiled.mount_order) == 9 + 5
    assert all(at["dev"] < at[name] for name in compiled.mount_order if name != "dev")
    assert compiled.plan.object("dev-ptmx").link == "pts/ptmx"
    devpts = [s.args for s in compiled.chain("dev-pts") if s.kind is StepKind.FSCONFIG]
    assert [a[0][1] for a in devpts] == ["source=devpts", "newinstance", "ptmxmode=0666", "mode=0620"]


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (_plan(ObjectSpec("a", "r", "x", ObjectKind.FILE), ObjectSpec("b", "r", "x", ObjectKind.DIRECTORY)),
         "objects 'a' and 'b' both have path r:x"),
        (_plan(ObjectSpec("l", "r", "m", ObjectKind.SYMLINK, link="/"), mounts=(_tmpfs("m", "m"),)),
         "mount 'm' targets r:m, where object 'l' is a symlink"),
        (_plan(ObjectSpec("f", "r", "f", ObjectKind.FILE), mounts=(_tmpfs("m", "f/m"),)),
         "mount 'm' lies beneath 'f', a file"),
        (_plan(ObjectSpec("l", "r", "l", ObjectKind.SYMLINK, link="/"), ObjectSpec("x", "r", "l/x", ObjectKind.FILE)),
         "object 'x' lies beneath 'l', a symlink"),
    ],
    ids=["same-path", "mount-on-symlink", "mount-beneath-file", "object-beneath-symlink"],
)
def test_impossible_layouts_are_compile_errors(plan: Plan, message: str) -> None:
    """What the loader refuses is refused again for plans built in Python."""
    with pytest.raises(CompileError, match=message):
        compile_apply(plan)
