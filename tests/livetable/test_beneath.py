"""Reading only the mounts on or below some paths gives exactly the full table's ``beneath``, on both sources."""

from __future__ import annotations

import os

import pytest
from _mounts import TRICKY, bind, mount_tmpfs, scratch

from mountplan._kernel import (
    MoveMountFlag,
    OpenFlag,
    Resolve,
    fsconfig_create,
    fsconfig_set_string,
    fsmount,
    fsopen,
    move_mount,
    openat2,
)
from mountplan.livetable import LiveMount, TableSource, read_live_table

pytestmark = pytest.mark.mountns

BASE = "/tmp/livetable"
SOURCES = [pytest.param(TableSource.STATMOUNT, id="statmount"), pytest.param(TableSource.MOUNTINFO, id="mountinfo")]


def _filtered(source: TableSource, paths: list[str]) -> list[LiveMount]:
    """The reference: read everything, keep what ``LiveTable.beneath`` keeps for any path, in table order."""
    full = read_live_table(source)
    keep = {id(m) for p in paths for m in full.beneath(p)}
    return [m for m in full if id(m) in keep]


def _slide_beneath(base: int, name: str, source: str) -> None:
    """Mount a tmpfs *under* whatever is on ``name`` (MOVE_MOUNT_BENEATH)."""
    with fsopen("tmpfs") as fs:
        fsconfig_set_string(fs.fileno(), "source", source)
        fsconfig_create(fs.fileno())
        flags = OpenFlag.PATH | OpenFlag.DIRECTORY | OpenFlag.CLOEXEC
        with fsmount(fs.fileno()) as mnt, openat2(base, name, flags, Resolve.BENEATH) as target:
            empty = MoveMountFlag.F_EMPTY_PATH | MoveMountFlag.T_EMPTY_PATH
            move_mount(mnt.fileno(), "", target.fileno(), "", empty | MoveMountFlag.BENEATH)


def _build() -> None:
    """root/ with mounts at every position, a sibling ``root2`` and an ``other`` beside it.

    - on the root itself: a stack of two, and one slid beneath its top;
    - covered: a mount at root/hidden made before the stack covered it;
    - below: stacks, nested mounts, names with every character mountinfo escapes;
    - beside: ``root2`` (a prefix of the name, not a child) and ``other``.
    """
    base = scratch(BASE)
    for name in ("root", "root/hidden", "root2", "other"):
        os.mkdir(name, dir_fd=base)
    mount_tmpfs(base, "root/hidden", {"source": "covered"})
    mount_tmpfs(base, "root2", {"source": "beside-prefix"})
    mount_tmpfs(base, "other", {"source": "beside"})
    mount_tmpfs(base, "root", {"source": "on-root-1"})
    mount_tmpfs(base, "root", {"source": "on-root-2"})
    _slide_beneath(base, "root", "slid-under-root")
    for i, name in enumerate(TRICKY):
        os.mkdir(f"root/{name}", dir_fd=base)
        mount_tmpfs(base, f"root/{name}", {"source": f"tricky-{i}"})
    os.mkdir("root/stack", dir_fd=base)
    for label in ("s-bottom", "s-top"):
        mount_tmpfs(base, "root/stack", {"source": label})
    os.mkdir(f"{BASE}/root/stack/deep")
    mount_tmpfs(base, "root/stack/deep", {"source": "deep"})
    os.mkdir(f"{BASE}/root/stack/deep/er")
    mount_tmpfs(base, "root/stack/deep/er", {"source": "deeper"})
    os.mkdir(f"{BASE}/root/bound")
    bind(base, "other", "root/bound")
    os.close(base)


@pytest.mark.parametrize("source", SOURCES)
def test_beneath_one_root_equals_the_full_read_filtered(source: TableSource) -> None:
    """Every mount on, under, beneath and below the root, with escapes and stacks; nothing beside it."""
    _build()
    paths = [f"{BASE}/root"]
    got = list(read_live_table(source, beneath=paths))
    assert got == _filtered(source, paths)
    sources = {m.source for m in got}
    assert {"covered", "on-root-1", "on-root-2", "slid-under-root", "s-bottom", "s-top", "deep", "deeper"} <= sources
    assert {f"tricky-{i}" for i in range(len(TRICKY))} <= sources
    assert not {"beside-prefix", "scratch"} & sources
    assert [m.mount_point for m in got if m.source == "beside"] == [f"{BASE}/root/bound"]  # the bind, not ``other``
    assert {m.mount_point for m in got} >= {f"{BASE}/root/{name}" for name in TRICKY}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    "relative",
    [
        pytest.param(["root/stack"], id="a-stacked-mount-point"),
        pytest.param(["root/sp ace", "other"], id="two-roots-one-with-a-space"),
        pytest.param(["root", "root/stack/deep"], id="nested-roots"),
        pytest.param(["root/stack/deep/"], id="trailing-slash"),
        pytest.param(["root/stack/deep/er/nothing-here"], id="a-plain-directory-inside-a-mount"),
        pytest.param(["does-not-exist"], id="a-missing-path"),
        pytest.param([""], id="the-scratch-mount-itself"),
        pytest.param([], id="no-roots"),
    ],
)
def test_beneath_paths_equal_the_full_read_filtered(source: TableSource, relative: list[str]) -> None:
    """Any set of paths: the same records, in table order, as filtering the whole table."""
    _build()
    os.mkdir(f"{BASE}/root/stack/deep/er/nothing-here")
    paths = [f"{BASE}/{p}".rstrip("/") if p else BASE for p in relative]
    assert list(read_live_table(source, beneath=paths)) == _filtered(source, paths)


@pytest.mark.parametrize("source", SOURCES)
def test_beneath_the_namespace_root_is_the_whole_table(source: TableSource) -> None:
    """``/`` keeps everything."""
    _build()
    assert list(read_live_table(source, beneath=["/"])) == list(read_live_table(source))


def test_beneath_sees_a_mount_slid_under_a_covering_one_at_its_place_in_the_stack() -> None:
    """The stack order ``at`` reports is the same in the partial table as in the full one."""
    _build()
    point = f"{BASE}/root"
    partial = read_live_table(TableSource.STATMOUNT, beneath=[point])
    full = read_live_table(TableSource.STATMOUNT)
    assert [m.source for m in partial.at(point)] == [m.source for m in full.at(point)]
    # BENEATH slides under the top of the stack, not under its bottom.
    assert [m.source for m in partial.at(point)] == ["on-root-1", "slid-under-root", "on-root-2"]


def test_beneath_rejects_a_relative_path_and_a_bare_string() -> None:
    """Paths are absolute, and a single string is not silently read as its characters."""
    with pytest.raises(ValueError):
        read_live_table(beneath=["relative"])
    with pytest.raises(TypeError):
        read_live_table(beneath="/tmp")
