"""parse_mountinfo: table-driven cases and Hypothesis properties (pure, no kernel)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mountplan._kernel.constants import MountAttr, Propagation
from mountplan.livetable import LiveMount, escape_mountinfo, parse_mountinfo, unescape_mountinfo

BASE = LiveMount(
    mnt_id=None,
    mnt_id_old=36,
    parent_id=None,
    parent_id_old=35,
    mount_point="/mnt/x",
    root="/",
    fs_type="tmpfs",
    source="tmpfs",
    super_options=(),
    super_readonly=False,
    attrs=MountAttr(0),
    propagation=Propagation.PRIVATE,
    peer_group=None,
    master=None,
    propagate_from=None,
    dev=(0, 42),
)


def _with(**changes: object) -> LiveMount:
    import dataclasses

    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


CASES = [
    pytest.param("36 35 0:42 / /mnt/x rw,relatime - tmpfs tmpfs rw", _with(), id="plain"),
    pytest.param(
        "36 35 0:42 / /mnt/a\\040b rw,relatime - tmpfs my\\040src rw",
        _with(mount_point="/mnt/a b", source="my src"),
        id="space-escape-in-point-and-source",
    ),
    pytest.param(
        "36 35 0:42 /sub\\011dir /mnt/t\\011\\012\\134 rw,relatime - tmpfs a\\134b rw",
        _with(root="/sub\tdir", mount_point="/mnt/t\t\n\\", source="a\\b"),
        id="tab-newline-backslash-escapes",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x rw,relatime - tmpfs  rw,size=65536k",
        _with(source="", super_options=("size=65536k",)),
        id="empty-source",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x rw,relatime shared:7 - tmpfs tmpfs rw",
        _with(propagation=Propagation.SHARED, peer_group=7),
        id="shared",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x rw,relatime master:3 - tmpfs tmpfs rw",
        _with(propagation=Propagation.SLAVE, master=3),
        id="slave",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x rw,relatime shared:9 master:3 propagate_from:2 - tmpfs tmpfs rw",
        _with(propagation=Propagation.SHARED, peer_group=9, master=3, propagate_from=2),
        id="shared-and-slave-keeps-master",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x rw,relatime unbindable - tmpfs tmpfs rw",
        _with(propagation=Propagation.UNBINDABLE),
        id="unbindable",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x rw,relatime master:4 unbindable - tmpfs tmpfs rw",
        _with(propagation=Propagation.UNBINDABLE, master=4),
        id="slave-and-unbindable-keeps-master",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x ro,nosuid,nodev,noexec,noatime,nodiratime,nosymfollow,idmapped - tmpfs t ro",
        _with(
            source="t",
            super_readonly=True,
            attrs=MountAttr.RDONLY
            | MountAttr.NOSUID
            | MountAttr.NODEV
            | MountAttr.NOEXEC
            | MountAttr.NOATIME
            | MountAttr.NODIRATIME
            | MountAttr.NOSYMFOLLOW
            | MountAttr.IDMAP,
        ),
        id="every-attr",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x rw - tmpfs tmpfs rw",
        _with(attrs=MountAttr.STRICTATIME),
        id="neither-relatime-nor-noatime-is-strictatime",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x ro,relatime - tmpfs tmpfs rw,sync,lazytime,mode=700",
        _with(attrs=MountAttr.RDONLY, super_options=("sync", "lazytime", "mode=700")),
        id="per-mount-ro-is-not-super-ro",
    ),
    pytest.param(
        "36 35 0:42 / /mnt/x rw,relatime - fuse.sshfs u@h:/p rw,user_id=0,key=a\\054b",
        _with(fs_type="fuse.sshfs", source="u@h:/p", super_options=("user_id=0", "key=a,b")),
        id="subtype-and-escaped-comma-in-option",
    ),
    pytest.param(
        "36 35 8:1 /dir\\134 /mnt/x rw,relatime - ext4 /dev/sda1 rw",
        _with(fs_type="ext4", source="/dev/sda1", root="/dir\\", dev=(8, 1)),
        id="bind-root-with-backslash",
    ),
]


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_parse_mountinfo_line(line: str, expected: LiveMount) -> None:
    """Each mountinfo line parses to exactly the expected record."""
    assert parse_mountinfo(line + "\n") == [expected]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("36 35 0:42 / /mnt/x rw,relatime tmpfs tmpfs rw", id="no-separator"),
        pytest.param("36 35 0:42 / /mnt/x rw,relatime - tmpfs rw", id="missing-field-after-separator"),
        pytest.param("x 35 0:42 / /mnt/x rw - tmpfs tmpfs rw", id="non-numeric-id"),
    ],
)
def test_parse_mountinfo_rejects_malformed_lines_with_value_error(line: str) -> None:
    """A malformed line raises ValueError, never another exception."""
    with pytest.raises(ValueError):
        parse_mountinfo(line)


def test_unescape_leaves_a_backslash_without_three_octal_digits_alone() -> None:
    """Only ``\\ooo`` with a first digit 0-3 is an escape; anything else is literal."""
    assert unescape_mountinfo("a\\b\\9") == "a\\b\\9"
    assert unescape_mountinfo("\\400") == "\\400"


paths = st.binary(min_size=1, max_size=64).map(lambda b: "/" + os.fsdecode(b.replace(b"\0", b"")))


@given(paths)
def test_escape_then_unescape_round_trips_any_bytes_path(path: str) -> None:
    """unescape(escape(p)) == p for any path, and the escaped form has no field separators."""
    escaped = escape_mountinfo(path)
    assert not any(ch in escaped for ch in " \t\n")
    assert unescape_mountinfo(escaped) == path


@given(st.binary(max_size=64))
def test_unescape_of_escaped_bytes_matches_their_surrogateescape_decoding(raw: bytes) -> None:
    """Each ``\\ooo`` becomes the same character that byte gives when the raw file is
    decoded with surrogateescape (ASCII as itself, 0x80-0xff as a lone surrogate)."""
    octal = "".join(f"\\{b:03o}" for b in raw)
    expected = "".join(bytes([b]).decode("utf-8", "surrogateescape") for b in raw)
    assert unescape_mountinfo(octal) == expected


optional_fields = st.lists(
    st.sampled_from(["shared:1", "master:2", "propagate_from:3", "unbindable", "shared:40"]),
    max_size=4,
    unique=True,
)
words = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20
)


@given(
    mnt_id=st.integers(1, 2**31 - 1),
    parent=st.integers(0, 2**31 - 1),
    major=st.integers(0, 4095),
    minor=st.integers(0, 2**20 - 1),
    root=paths,
    point=paths,
    source=words,
    fs_type=st.from_regex(r"[a-z0-9_.]{1,12}", fullmatch=True),
    mount_opts=st.lists(st.sampled_from(["nosuid", "nodev", "noexec", "noatime", "relatime", "nosymfollow"])),
    tags=optional_fields,
    options=st.lists(words.map(lambda w: escape_mountinfo(w).replace(",", "\\054")).filter(bool), max_size=5),
    readonly=st.booleans(),
)
def test_parse_mountinfo_never_crashes_on_well_formed_lines(
    mnt_id: int,
    parent: int,
    major: int,
    minor: int,
    root: str,
    point: str,
    source: str,
    fs_type: str,
    mount_opts: list[str],
    tags: list[str],
    options: list[str],
    readonly: bool,
) -> None:
    """Any line in proc(5) format parses, and the paths and source come back unescaped."""
    super_opts = ",".join(["ro" if readonly else "rw", *options])
    fields = [
        str(mnt_id),
        str(parent),
        f"{major}:{minor}",
        escape_mountinfo(root),
        escape_mountinfo(point),
        ",".join(["rw", *mount_opts]),
        *tags,
        "-",
        fs_type,
        escape_mountinfo(source),
        super_opts,
    ]
    (m,) = parse_mountinfo(" ".join(fields) + "\n")
    assert (m.mnt_id_old, m.parent_id_old, m.dev) == (mnt_id, parent, (major, minor))
    assert (m.root, m.mount_point, m.source, m.fs_type) == (root, point, source, fs_type)
    assert m.super_readonly is readonly
    assert len(m.super_options) == len(options)
    assert (m.peer_group is not None) == any(t.startswith("shared:") for t in tags)
