"""Option normalisation: predicted read-back forms, checked against what the kernel echoes."""

from __future__ import annotations

import errno
import os

import pytest
from _mounts import mount_tmpfs, scratch

from mountplan import _fsopts
from mountplan._fsopts import IdMap, normalize_options, options_differ
from mountplan.errors import KernelError
from mountplan.livetable import read_mountinfo

ROOT = IdMap()  # real root: identity map, euid 0
USERNS = IdMap(uid_ranges=((0, 65534, 1),), gid_ranges=((0, 65534, 1),))  # root in a user namespace
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: glibc computes this from sysinfo(2) totalram, which is the kernel's totalram_pages().
TOTALRAM_PAGES = os.sysconf("SC_PHYS_PAGES")


def shmem_percent_bytes(
    percent: int, totalram_pages: int = TOTALRAM_PAGES, page_size: int = PAGE_SIZE
) -> int:
    """mm/shmem.c shmem_parse_one, ``size=N%``: ``(N << PAGE_SHIFT) * totalram_pages() / 100`` bytes, floored."""
    return percent * page_size * totalram_pages // 100


def tmpfs_size_echo(
    size_bytes: int, totalram_pages: int = TOTALRAM_PAGES, page_size: int = PAGE_SIZE
) -> dict[str, str | None]:
    """What shmem_show_options prints for a tmpfs of ``size_bytes``.

    The limit is ``DIV_ROUND_UP(size, PAGE_SIZE)`` pages; it is printed as
    ``size=<pages * PAGE_SIZE / 1024>k`` unless it equals the default,
    shmem_default_max_blocks() = ``totalram_pages() / 2`` (rounded down). So with
    an odd page count even ``size=50%`` (rounded up) is printed.
    """
    blocks = -(-size_bytes // page_size)
    if blocks == totalram_pages // 2:
        return {}
    return {"size": f"{blocks * page_size // 1024}k"}


# (fs_type, planned options, expected read-back for real root, for root in a user namespace)
# Read-back forms found by mounting each case (see test_kernel_echoes_the_predicted_options).
READBACK = [
    pytest.param(
        "tmpfs",
        {"size": "64M"},
        tmpfs_size_echo(64 << 20),
        {**tmpfs_size_echo(64 << 20), "uid": "65534", "gid": "65534"},
        id="tmpfs-size-M",
    ),
    pytest.param("tmpfs", {"size": "1g"}, tmpfs_size_echo(1 << 30), None, id="tmpfs-size-g"),
    pytest.param("tmpfs", {"size": "100k"}, tmpfs_size_echo(100 << 10), None, id="tmpfs-size-k"),
    pytest.param(
        "tmpfs", {"size": "5000"}, tmpfs_size_echo(5000), None, id="tmpfs-size-bytes-round-up-to-pages"
    ),
    pytest.param("tmpfs", {"size": "0"}, {"size": "0k"}, None, id="tmpfs-size-0-unlimited"),
    pytest.param("tmpfs", {"size": "0x100000"}, tmpfs_size_echo(1 << 20), None, id="tmpfs-size-hex"),
    pytest.param(
        "tmpfs", {"size": "50%"}, tmpfs_size_echo(shmem_percent_bytes(50)), None, id="tmpfs-size-half-ram"
    ),
    pytest.param(
        "tmpfs", {"size": "25%"}, tmpfs_size_echo(shmem_percent_bytes(25)), None, id="tmpfs-size-percent"
    ),
    pytest.param("tmpfs", {"nr_inodes": "1k"}, {"nr_inodes": "1024"}, None, id="tmpfs-nr_inodes-k"),
    pytest.param("tmpfs", {"nr_inodes": "2m"}, {"nr_inodes": "2097152"}, None, id="tmpfs-nr_inodes-m"),
    pytest.param("tmpfs", {"nr_inodes": "1g"}, {"nr_inodes": "1073741824"}, None, id="tmpfs-nr_inodes-g"),
    pytest.param("tmpfs", {"nr_inodes": "0"}, {"nr_inodes": "0"}, None, id="tmpfs-nr_inodes-0"),
    pytest.param("tmpfs", {"mode": "1777"}, {}, None, id="tmpfs-mode-1777-is-default"),
    pytest.param("tmpfs", {"mode": "01777"}, {}, None, id="tmpfs-mode-leading-zero"),
    pytest.param("tmpfs", {"mode": "0755"}, {"mode": "755"}, None, id="tmpfs-mode-0755"),
    pytest.param("tmpfs", {"mode": "0"}, {"mode": "000"}, None, id="tmpfs-mode-three-digits"),
    pytest.param("tmpfs", {"uid": "0", "gid": "0"}, {}, {"uid": "65534", "gid": "65534"}, id="tmpfs-uid-0"),
    pytest.param(
        "tmpfs", {"uid": "1000", "gid": "7"}, {"uid": "1000", "gid": "7"}, "unmapped", id="tmpfs-uid-gid"
    ),
    pytest.param("tmpfs", {"huge": "never"}, {}, None, id="tmpfs-huge-never-default"),
    pytest.param("tmpfs", {"huge": "within_size"}, {"huge": "within_size"}, None, id="tmpfs-huge"),
    pytest.param("tmpfs", {"inode64": None}, {"inode64": None}, None, id="tmpfs-inode64"),
    pytest.param("tmpfs", {"mpol": "default"}, {}, None, id="tmpfs-mpol-default"),
    pytest.param("tmpfs", {"mpol": "local"}, {"mpol": "local"}, None, id="tmpfs-mpol-local"),
    pytest.param("tmpfs", {"source": "x", "ro": None}, {}, None, id="tmpfs-source-and-ro-not-echoed"),
    pytest.param(
        "tmpfs",
        {"lazytime": None, "size": "1M"},
        {"lazytime": None, **tmpfs_size_echo(1 << 20)},
        None,
        id="tmpfs-sb-flag-first",
    ),
    pytest.param(
        "tmpfs",
        {"gid": "2", "uid": "1", "mode": "755", "nr_inodes": "1k", "size": "64M"},
        {**tmpfs_size_echo(64 << 20), "nr_inodes": "1024", "mode": "755", "uid": "1", "gid": "2"},
        "unmapped",
        id="tmpfs-kernel-order",
    ),
    pytest.param("ramfs", {"mode": "1777"}, {"mode": "1777"}, None, id="ramfs-mode"),
    pytest.param("ramfs", {"mode": "0755"}, {}, None, id="ramfs-mode-default"),
    pytest.param("proc", {"hidepid": "2"}, {"hidepid": "invisible"}, None, id="proc-hidepid-2"),
    pytest.param(
        "proc", {"hidepid": "invisible"}, {"hidepid": "invisible"}, None, id="proc-hidepid-invisible"
    ),
    pytest.param("proc", {"hidepid": "1"}, {"hidepid": "noaccess"}, None, id="proc-hidepid-1"),
    pytest.param("proc", {"hidepid": "4"}, {"hidepid": "ptraceable"}, None, id="proc-hidepid-4"),
    pytest.param("proc", {"hidepid": "off"}, {}, None, id="proc-hidepid-off"),
    pytest.param("proc", {"hidepid": "0"}, {}, None, id="proc-hidepid-0"),
    pytest.param("proc", {"subset": "pid"}, {"subset": "pid"}, None, id="proc-subset"),
    pytest.param("proc", {"gid": "0"}, {}, {"gid": "65534"}, id="proc-gid-0"),
    pytest.param("proc", {"gid": "5"}, {"gid": "5"}, {"gid": "65534"}, id="proc-gid-unmapped-is-overflow"),
    pytest.param(
        "proc",
        {"subset": "pid", "hidepid": "invisible", "gid": "0"},
        {"hidepid": "invisible", "subset": "pid"},
        {"gid": "65534", "hidepid": "invisible", "subset": "pid"},
        id="proc-kernel-order",
    ),
    pytest.param("devpts", {}, {"mode": "600", "ptmxmode": "000"}, None, id="devpts-defaults-always-echoed"),
    pytest.param(
        "devpts",
        {"mode": "0620", "newinstance": None},
        {"mode": "620", "ptmxmode": "000"},
        None,
        id="devpts-mode",
    ),
    pytest.param(
        "devpts", {"max": "100"}, {"mode": "600", "ptmxmode": "000", "max": "100"}, None, id="devpts-max"
    ),
    pytest.param(
        "devpts",
        {"uid": "0"},
        {"uid": "0", "mode": "600", "ptmxmode": "000"},
        {"uid": "65534", "mode": "600", "ptmxmode": "000"},
        id="devpts-uid",
    ),
    pytest.param("mqueue", {}, {}, None, id="mqueue-silent"),
    pytest.param("cgroup2", {"nsdelegate": None}, {"nsdelegate": None}, None, id="cgroup2-flag"),
]


@pytest.mark.parametrize(("fs_type", "options", "as_root", "in_userns"), READBACK)
def test_normalize_options_predicts_the_read_back_form(
    fs_type: str,
    options: dict[str, str | None],
    as_root: dict[str, str | None],
    in_userns: dict[str, str | None] | str | None,
) -> None:
    """normalize_options gives the kernel's spelling, order and defaults, per user namespace;
    an id the namespace does not map is a ValueError for tmpfs (the kernel says EINVAL)."""
    assert normalize_options(fs_type, options, ids=ROOT) == as_root
    assert list(normalize_options(fs_type, options, ids=ROOT)) == list(as_root)
    if in_userns == "unmapped":
        with pytest.raises(ValueError, match="not mapped"):
            normalize_options(fs_type, options, ids=USERNS)
        return
    if in_userns is None:
        in_userns = dict(as_root)
        if fs_type == "tmpfs":
            in_userns.setdefault("uid", "65534")
            in_userns.setdefault("gid", "65534")
            in_userns = {k: in_userns[k] for k in _TMPFS_ORDER if k in in_userns} | {
                k: v for k, v in in_userns.items() if k not in _TMPFS_ORDER
            }
    assert normalize_options(fs_type, options, ids=USERNS) == in_userns


_TMPFS_ORDER = ["lazytime", "size", "nr_inodes", "mode", "uid", "gid"]


@pytest.mark.parametrize(
    ("fs_type", "planned", "live", "expected"),
    [
        pytest.param("tmpfs", {"size": "64M"}, ["size=65536k"], [], id="same-size-other-spelling"),
        pytest.param(
            "tmpfs",
            {"size": "64M"},
            ["size=131072k"],
            [("size", "size=65536k", "size=131072k")],
            id="size-drift",
        ),
        pytest.param("tmpfs", {}, ["size=1024k"], [("size", None, "size=1024k")], id="unplanned-live-option"),
        pytest.param("tmpfs", {"noswap": None}, [], [("noswap", "noswap", None)], id="planned-flag-missing"),
        pytest.param("tmpfs", {"source": "a", "mode": "1777"}, [], [], id="unechoed-options-ignored"),
        pytest.param("proc", {"hidepid": "2"}, ["hidepid=invisible"], [], id="proc-hidepid-numeric"),
        pytest.param(
            "ext4",
            {"errors": "remount-ro"},
            ["errors=remount-ro", "data=ordered"],
            [],
            id="unknown-fs-extra-live-ignored",
        ),
        pytest.param(
            "ext4",
            {"data": "journal"},
            ["data=ordered"],
            [("data", "data=journal", "data=ordered")],
            id="unknown-fs-planned-key",
        ),
        pytest.param(
            "ext4", {}, ["lazytime"], [("lazytime", None, "lazytime")], id="unknown-fs-sb-flag-still-checked"
        ),
    ],
)
def test_options_differ_reports_only_real_differences(
    fs_type: str,
    planned: dict[str, str | None],
    live: list[str],
    expected: list[tuple[str, str | None, str | None]],
) -> None:
    """Differences are (key, planned, live) in kernel spelling, None for absent, sorted by key."""
    assert options_differ(fs_type, planned, live, ids=ROOT) == expected


def test_idmap_maps_ranges_and_overflows_unmapped_ids() -> None:
    """An id inside a uid_map range is shifted; one outside every range becomes the overflow id."""
    ids = IdMap(uid_ranges=((0, 100000, 65536),), overflow_uid=65534)
    assert ids.kernel_uid(0) == 100000
    assert ids.kernel_uid(1000) == 101000
    assert ids.kernel_uid(70000) == 65534


def test_bad_tmpfs_size_is_a_value_error() -> None:
    """A size the kernel would reject (``1.5M``) is rejected here too."""
    with pytest.raises(ValueError):
        normalize_options("tmpfs", {"size": "1.5M"}, ids=ROOT)


@pytest.mark.mountns
def test_kernel_echoes_the_predicted_options() -> None:
    """Mount every table case for real; the live super options equal the prediction.

    Cases normalize_options refuses for this namespace (an unmapped uid, which the
    kernel refuses with EINVAL too) are skipped, and so is a filesystem type the
    namespace may not mount at all (EPERM); every tmpfs case must mount. cgroup2
    has its own test: its flags are machine-wide, and the sandbox's cgroup
    namespace makes the kernel ignore them.
    """
    base = scratch()
    ids = IdMap.current()
    checked: list[str] = []
    refused: set[str] = set()
    failures: list[str] = []
    for index, case in enumerate(READBACK):
        fs_type, options, _, _ = case.values
        assert isinstance(fs_type, str) and isinstance(options, dict)
        if fs_type == "cgroup2":
            continue  # see test_cgroup2_flags_from_a_cgroup_namespace_change_nothing
        name = f"c{index}"
        os.mkdir(name, dir_fd=base)
        try:
            predicted = normalize_options(fs_type, options, ids=ids)
        except ValueError:
            continue  # e.g. uid=1000 in a one-id user namespace: the kernel says EINVAL too
        try:
            mount_tmpfs(base, name, options, fs_type=fs_type)
        except KernelError as exc:
            # Some namespaces may not mount proc at all (EPERM: a nested user
            # namespace, or a /proc with locked overmounts); that is not our subject.
            if exc.errno != errno.EPERM or fs_type == "tmpfs":
                raise
            refused.add(fs_type)
            continue
        (live,) = [m for m in read_mountinfo() if m.mount_point == f"/tmp/livetable/{name}"]
        diff = options_differ(fs_type, options, live.super_options, ids=ids)
        if diff or list(predicted) != [o.partition("=")[0] for o in live.super_options]:
            failures.append(f"{case.id}: predicted {predicted}, kernel {live.super_options}, diff {diff}")
        checked.append(str(case.id))
    os.close(base)
    assert not failures, "\n".join(failures)
    tmpfs_cases = [c for c in READBACK if c.values[0] == "tmpfs"]
    assert sum(1 for c in checked if c.startswith("tmpfs")) >= len(tmpfs_cases) - 2
    assert refused <= {"proc", "devpts", "mqueue"}, refused


# Hand arithmetic with 4 KiB pages, one page count of each parity:
#   even 6,170,914 pages: 50% -> 2048 * 6170914 bytes = 3,085,457 pages = the default, not printed;
#                         25% -> 1024 * 6170914 bytes = 1,542,728.5 pages, rounded up to 1,542,729 = 6,170,916k.
#   odd  6,171,023 pages: 50% -> 3,085,511.5 pages, rounded up to 3,085,512 (default 3,085,511) = 12,342,048k;
#                         25% -> 1,542,755.75 pages, rounded up to 1,542,756 = 6,171,024k.
#   7% of the odd count: 7 * 4096 * 6171023 // 100 = 1,769,355,714 bytes = 431,971.6 pages -> 431,972 = 1,727,888k.
PARITY_CASES = [
    pytest.param(6_170_914, 50, {}, id="even-pages-50%-is-the-default"),
    pytest.param(6_170_914, 25, {"size": "6170916k"}, id="even-pages-25%-rounds-up"),
    pytest.param(6_171_023, 50, {"size": "12342048k"}, id="odd-pages-50%-rounds-up-past-the-default"),
    pytest.param(6_171_023, 25, {"size": "6171024k"}, id="odd-pages-25%-rounds-up"),
    pytest.param(6_171_023, 7, {"size": "1727888k"}, id="odd-pages-7%-floor-then-round-up"),
]


@pytest.mark.parametrize(("totalram_pages", "percent", "expected"), PARITY_CASES)
def test_shmem_percent_rule_matches_hand_arithmetic(
    totalram_pages: int, percent: int, expected: dict[str, str | None]
) -> None:
    """The expectation helpers compute the kernel's rule for either parity of the page count."""
    assert (
        tmpfs_size_echo(shmem_percent_bytes(percent, totalram_pages, 4096), totalram_pages, 4096) == expected
    )


@pytest.mark.parametrize(("totalram_pages", "percent", "expected"), PARITY_CASES)
def test_normalize_options_percent_size_for_any_page_count(
    monkeypatch: pytest.MonkeyPatch, totalram_pages: int, percent: int, expected: dict[str, str | None]
) -> None:
    """normalize_options rounds a percentage like mm/shmem.c whatever the parity of totalram_pages."""
    monkeypatch.setattr(_fsopts, "_total_ram_pages", lambda: totalram_pages)
    want = tmpfs_size_echo(shmem_percent_bytes(percent, totalram_pages), totalram_pages)
    if PAGE_SIZE == 4096:
        assert want == expected
    assert normalize_options("tmpfs", {"size": f"{percent}%"}, ids=ROOT) == want


#: Percentages whose byte count is rarely a whole number of pages, plus the default and above 100%.
PERCENTS = [1, 3, 7, 13, 25, 33, 50, 67, 99, 100, 150]


@pytest.mark.mountns
def test_kernel_percent_size_follows_the_shmem_rule() -> None:
    """Real tmpfs mounts with ``size=N%`` print exactly what the rule computes from totalram_pages."""
    base = scratch()
    failures = []
    for percent in PERCENTS:
        name = f"p{percent}"
        os.mkdir(name, dir_fd=base)
        mount_tmpfs(base, name, {"size": f"{percent}%"})
        (live,) = [m for m in read_mountinfo() if m.mount_point == f"/tmp/livetable/{name}"]
        shown = {k: v for k, _, v in (o.partition("=") for o in live.super_options) if k == "size"}
        if shown != tmpfs_size_echo(shmem_percent_bytes(percent)):
            failures.append(
                f"{percent}%: kernel {shown}, rule {tmpfs_size_echo(shmem_percent_bytes(percent))}"
            )
    os.close(base)
    assert not failures, f"totalram_pages={TOTALRAM_PAGES} page_size={PAGE_SIZE}\n" + "\n".join(failures)


def _cgroup2_super_options() -> set[tuple[str, ...]]:
    return {m.super_options for m in read_mountinfo() if m.fs_type == "cgroup2"}


@pytest.mark.mountns
@pytest.mark.cgroupns
def test_cgroup2_flags_from_a_cgroup_namespace_change_nothing() -> None:
    """A cgroup2 mount made inside the sandbox shows the machine-wide flags, whatever it asked for.

    The flags are those of the one cgroup2 hierarchy (kernel/cgroup/cgroup.c
    apply_cgroup_root_flags); the kernel applies them only for a mount from the
    initial cgroup namespace. Each flag set below differs from some other, so a
    sandbox without its own cgroup namespace would change every cgroup2 mount's
    super options here (and on the host, which the suite's host guard reports);
    the last mount asks for the flags seen at the start, to put them back then.
    """
    base = scratch()
    before = _cgroup2_super_options()
    assert len(before) <= 1, before  # one hierarchy, so one set of flags on every cgroup2 mount
    variants: list[dict[str, str | None]] = [
        {"nsdelegate": None},
        {},
        {"nsdelegate": None, "memory_recursiveprot": None},
    ]
    seen: list[str] = []
    try:
        for index, options in enumerate(variants):
            name = f"cg{index}"
            os.mkdir(name, dir_fd=base)
            try:
                mount_tmpfs(base, name, options, fs_type="cgroup2")
            except KernelError as exc:
                if exc.errno == errno.EINVAL and "memory_recursiveprot" in options:
                    continue  # older than Linux 5.7
                raise
            now = _cgroup2_super_options()
            seen.append(f"{options} -> {sorted(now)}")
            assert len(now) == 1, now
            before = before or now  # no host cgroup2 mount: the first of ours shows the flags
            assert now == before, "\n".join(seen)
    finally:
        (flags,) = before or {("rw",)}
        restore = {flag: None for flag in flags if flag not in ("rw", "ro")}
        os.mkdir("restore", dir_fd=base)
        mount_tmpfs(base, "restore", restore, fs_type="cgroup2")
    os.close(base)
