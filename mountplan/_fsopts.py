"""Predict how the kernel echoes filesystem options, so drift checks compare like with like."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["IdMap", "normalize_options", "options_differ", "parse_super_options"]

Options = dict[str, str | None]

_PAGE = 4096
# Options every filesystem takes through the VFS but never shows among its own.
_NEVER_ECHOED = frozenset({"source", "ro", "rw"})
# Generic superblock flags: mountinfo lists them before the fs's own options.
_SB_FLAGS = ("sync", "dirsync", "mand", "lazytime")


@dataclass(frozen=True, slots=True)
class IdMap:
    """How the mounting process's uids/gids map to kernel ids.

    Filesystems print uid=/gid= in the *initial* user namespace (the kernel's
    ``from_kuid_munged(&init_user_ns, ...)``), so a tmpfs mounted by root inside a
    user namespace that maps 0 to 65534 reads back ``uid=65534,gid=65534`` even when
    no uid was given. Only one level of mapping is modelled: ``/proc/self/uid_map``
    maps to the parent namespace, which is the initial one unless namespaces nest.
    """

    uid_ranges: tuple[tuple[int, int, int], ...] = ((0, 0, 4294967295),)
    gid_ranges: tuple[tuple[int, int, int], ...] = ((0, 0, 4294967295),)
    euid: int = 0
    egid: int = 0
    overflow_uid: int = 65534
    overflow_gid: int = 65534

    @classmethod
    def current(cls) -> IdMap:
        """The calling process's maps and effective ids."""
        return cls(
            uid_ranges=_read_id_map("/proc/self/uid_map"),
            gid_ranges=_read_id_map("/proc/self/gid_map"),
            euid=os.geteuid(),
            egid=os.getegid(),
            overflow_uid=_read_int("/proc/sys/kernel/overflowuid", 65534),
            overflow_gid=_read_int("/proc/sys/kernel/overflowgid", 65534),
        )

    def kernel_uid(self, uid: int) -> int:
        """``uid`` as the kernel prints it; the overflow uid when unmapped."""
        return _map_id(self.uid_ranges, uid, self.overflow_uid)

    def kernel_gid(self, gid: int) -> int:
        """``gid`` as the kernel prints it; the overflow gid when unmapped."""
        return _map_id(self.gid_ranges, gid, self.overflow_gid)

    def mapped_uid(self, uid: int) -> int:
        """Like :meth:`kernel_uid` but ValueError when unmapped (tmpfs, devpts: EINVAL)."""
        if _map_id(self.uid_ranges, uid, -1) < 0:
            raise ValueError(f"uid {uid} is not mapped in this user namespace; the kernel refuses it")
        return self.kernel_uid(uid)

    def mapped_gid(self, gid: int) -> int:
        """Like :meth:`kernel_gid` but ValueError when unmapped (tmpfs, devpts: EINVAL)."""
        if _map_id(self.gid_ranges, gid, -1) < 0:
            raise ValueError(f"gid {gid} is not mapped in this user namespace; the kernel refuses it")
        return self.kernel_gid(gid)


def _read_id_map(path: str) -> tuple[tuple[int, int, int], ...]:
    try:
        with open(path) as f:
            rows = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        return ((0, 0, 4294967295),)
    return tuple((r[0], r[1], r[2]) for r in rows if len(r) == 3)


def _read_int(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def _map_id(ranges: Iterable[tuple[int, int, int]], value: int, overflow: int) -> int:
    for inside, outside, count in ranges:
        if inside <= value < inside + count:
            return outside + (value - inside)
    return overflow


def _strtoull(text: str) -> tuple[int, str]:
    """C ``simple_strtoull(s, &end, 0)``: 0x hex, leading-0 octal, else decimal."""
    s = text
    base = 10
    if s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
        base, s = 16, s[2:]
    elif s.startswith("0"):
        base = 8
    digits = "0123456789abcdef"[:base]
    end = 0
    while end < len(s) and s[end].lower() in digits:
        end += 1
    if end == 0:
        raise ValueError(f"not a number: {text!r}")
    return int(s[:end], base), s[end:]


_MEMPARSE_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def _memparse(text: str) -> tuple[int, str]:
    """The kernel's ``memparse()``: a number with an optional K/M/G/T/P/E suffix."""
    value, rest = _strtoull(text)
    if rest and rest[0].lower() in _MEMPARSE_SHIFT:
        value <<= _MEMPARSE_SHIFT[rest[0].lower()]
        rest = rest[1:]
    return value, rest


def _total_ram_pages() -> int:
    return int(os.sysconf("SC_PHYS_PAGES"))


def _tmpfs_blocks(value: str) -> int:
    size, rest = _memparse(value)
    if rest == "%":
        # mm/shmem.c: size is a percentage of RAM, computed in bytes then rounded up.
        size = (size * _PAGE * _total_ram_pages()) // 100
        rest = ""
    if rest:
        raise ValueError(f"bad tmpfs size {value!r}")
    return -(-size // _PAGE)


def _uint(value: str | None) -> int:
    """A u32 option as fs_parse reads it (base 0: ``0x3e8``, ``01750`` and ``1000`` all work)."""
    number, rest = _strtoull(value or "0")
    if rest:
        raise ValueError(f"not a number: {value!r}")
    return number


def _octal_mode(value: str) -> int:
    return int(value, 8) & 0o7777


def _tmpfs(options: Mapping[str, str | None], ids: IdMap) -> Options:
    # Order and defaults follow mm/shmem.c shmem_show_options().
    out: Options = {}
    ram = _total_ram_pages()
    blocks = None
    if "size" in options:
        blocks = _tmpfs_blocks(options["size"] or "")
    if "nr_blocks" in options:  # the same limit in pages; the kernel shows it as size=
        blocks, rest = _memparse(options["nr_blocks"] or "")
        if rest:
            raise ValueError(f"bad tmpfs nr_blocks {options['nr_blocks']!r}")
    if blocks is not None and blocks != ram // 2:
        out["size"] = f"{blocks * _PAGE // 1024}k"
    if "nr_inodes" in options:
        inodes, rest = _memparse(options["nr_inodes"] or "")
        if rest:
            raise ValueError(f"bad tmpfs nr_inodes {options['nr_inodes']!r}")
        if inodes != ram // 2:
            out["nr_inodes"] = str(inodes)
    if "mode" in options:
        mode = _octal_mode(options["mode"] or "")
        if mode != 0o1777:
            out["mode"] = f"{mode:03o}"
    uid = ids.mapped_uid(_uint(options["uid"])) if "uid" in options else ids.kernel_uid(ids.euid)
    if uid != 0:
        out["uid"] = str(uid)
    gid = ids.mapped_gid(_uint(options["gid"])) if "gid" in options else ids.kernel_gid(ids.egid)
    if gid != 0:
        out["gid"] = str(gid)
    if options.get("huge", "never") != "never":
        out["huge"] = options["huge"]
    # Assumes CONFIG_TMPFS_INODE64=n (Debian, and the kernel these were measured on).
    if "inode64" in options and "inode32" not in options:
        out["inode64"] = None
    mpol = options.get("mpol")
    if mpol is not None and mpol != "default":
        if mpol == "interleave":
            nodes = _read_nodes()
            out["mpol"] = f"interleave:{nodes}" if nodes else mpol
        else:
            out["mpol"] = mpol
    if "noswap" in options:
        out["noswap"] = None
    handled = {"size", "nr_blocks", "nr_inodes", "mode", "uid", "gid", "huge", "inode64", "inode32", "mpol", "noswap"}
    out.update((k, v) for k, v in options.items() if k not in handled)
    return out


def _read_nodes() -> str:
    try:
        with open("/sys/devices/system/node/has_memory") as f:
            return f.read().strip()
    except OSError:
        return ""


def _ramfs(options: Mapping[str, str | None], ids: IdMap) -> Options:
    out: Options = {}
    if "mode" in options:
        mode = _octal_mode(options["mode"] or "")
        if mode != 0o755:
            out["mode"] = f"{mode:o}"  # ramfs prints %o, not tmpfs's %03o
    out.update((k, v) for k, v in options.items() if k != "mode")
    return out


_HIDEPID = {"0": None, "off": None, "1": "noaccess", "noaccess": "noaccess",
            "2": "invisible", "invisible": "invisible", "4": "ptraceable", "ptraceable": "ptraceable"}


def _proc(options: Mapping[str, str | None], ids: IdMap) -> Options:
    # fs/proc/root.c proc_show_options(): gid, hidepid, subset. proc accepts an
    # unmapped gid and shows the overflow gid, unlike tmpfs and devpts.
    out: Options = {}
    if "gid" in options:
        gid = ids.kernel_gid(_uint(options["gid"]))
        if gid != 0:
            out["gid"] = str(gid)
    if "hidepid" in options:
        hidepid = _HIDEPID.get(options["hidepid"] or "", options["hidepid"])
        if hidepid is not None:
            out["hidepid"] = hidepid
    out.update((k, v) for k, v in options.items() if k not in {"gid", "hidepid"})
    return out


_DEVPTS_MAX = 1 << 20


def _devpts(options: Mapping[str, str | None], ids: IdMap) -> Options:
    # fs/devpts/inode.c devpts_show_options(): uid, gid, mode, ptmxmode (always), max.
    out: Options = {}
    if "uid" in options:
        out["uid"] = str(ids.mapped_uid(_uint(options["uid"])))
    if "gid" in options:
        out["gid"] = str(ids.mapped_gid(_uint(options["gid"])))
    out["mode"] = f"{_octal_mode(options.get('mode') or '600'):03o}"
    out["ptmxmode"] = f"{_octal_mode(options.get('ptmxmode') or '000'):03o}"
    if "max" in options:
        limit = _uint(options["max"])
        if limit < _DEVPTS_MAX:
            out["max"] = str(limit)
    out.update((k, v) for k, v in options.items() if k not in {"uid", "gid", "mode", "ptmxmode", "max", "newinstance"})
    return out


def _silent(options: Mapping[str, str | None], ids: IdMap) -> Options:
    return dict(options)


_Normalizer = Callable[[Mapping[str, str | None], IdMap], Options]

#: Filesystems whose complete read-back (defaults included) is modelled; for
#: these an option shown live but not planned is drift too.
_KNOWN: dict[str, _Normalizer] = {
    "tmpfs": _tmpfs,
    "ramfs": _ramfs,
    "proc": _proc,
    "devpts": _devpts,
    "mqueue": _silent,
    "sysfs": _silent,
}

#: Options that belong to the whole machine, not to one mount: cgroup2's flags are
#: one set per machine (and ignored from a non-initial cgroup namespace), so a
#: mount's read-back says nothing about whether *it* drifted.
_MACHINE_WIDE = frozenset({"cgroup2"})


def normalize_options(
    fs_type: str, options: Mapping[str, str | None], *, ids: IdMap | None = None
) -> dict[str, str | None]:
    """The super options the kernel will show for a mount made with ``options``.

    Values are the read-back spellings (tmpfs ``size=64M`` → ``65536k``, proc
    ``hidepid=2`` → ``invisible``); options the kernel does not echo (``source``,
    ``ro``/``rw``, values equal to the filesystem's default) are dropped. ``None``
    is a flag. Keys keep the order the kernel prints them in. For a filesystem
    not modelled here the options pass through unchanged (minus the unechoed ones).
    ``ids`` defaults to the calling process's user-namespace mapping.
    """
    ids = ids if ids is not None else IdMap.current()
    generic = {k: None for k in _SB_FLAGS if k in options}
    rest = {k: v for k, v in options.items() if k not in _NEVER_ECHOED and k not in generic}
    normalizer = _KNOWN.get(fs_type)
    specific = normalizer(rest, ids) if normalizer is not None else rest
    return {**generic, **specific}


def parse_super_options(options: Iterable[str]) -> dict[str, str | None]:
    """``("size=65536k", "noswap")`` → ``{"size": "65536k", "noswap": None}``."""
    out: dict[str, str | None] = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        out[key] = value if eq else None
    return out


def _render(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


def options_differ(
    fs_type: str,
    planned: Mapping[str, str | None],
    live_super_options: Iterable[str],
    *,
    ids: IdMap | None = None,
) -> list[tuple[str, str | None, str | None]]:
    """Options whose planned read-back differs from the live super options.

    Each entry is ``(key, planned, live)`` with both sides rendered as the kernel
    prints them (``"size=65536k"``, ``"noswap"``) or ``None`` when absent; sorted
    by key. For a filesystem modelled here every live option is checked; for
    others only the planned keys are, since their defaults cannot be predicted.
    """
    if fs_type in _MACHINE_WIDE:
        return []
    want = normalize_options(fs_type, planned, ids=ids)
    have = parse_super_options(live_super_options)
    keys = set(want) | set(have) if fs_type in _KNOWN else set(want) | (set(_SB_FLAGS) & set(have))
    out: list[tuple[str, str | None, str | None]] = []
    for key in sorted(keys):
        mine = _render(key, want[key]) if key in want else None
        theirs = _render(key, have[key]) if key in have else None
        if mine != theirs:
            out.append((key, mine, theirs))
    return out
