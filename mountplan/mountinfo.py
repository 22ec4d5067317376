"""/proc/self/mountinfo (proc(5)) into LiveMount records, octal escapes included."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mountplan._kernel.constants import MountAttr
from mountplan.live_mount import LiveMount, _normalize_paths, _propagation

__all__ = ["escape_mountinfo", "parse_mountinfo", "read_mountinfo", "unescape_mountinfo"]


# mountinfo escapes exactly these in paths and sources (fs/proc_namespace.c mangle()).
_ESCAPE = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}
_ESCAPE_RE = re.compile(r"[ \t\n\\]")
_UNESCAPE_RE = re.compile(r"\\([0-3][0-7]{2})")


def escape_mountinfo(text: str) -> str:
    """Escape a path or source the way the kernel writes it into mountinfo."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPE[m.group()], text)


def _unescape_char(match: re.Match[str]) -> str:
    value = int(match.group(1), 8)
    # A byte above 0x7f stands for itself in the raw file, which we decode with
    # surrogateescape; map an escaped one the same way so both spellings agree.
    return chr(value) if value < 0x80 else chr(0xDC00 + value)


def unescape_mountinfo(text: str) -> str:
    """Undo the kernel's ``\\ooo`` octal escapes (``\\040`` is a space)."""
    if "\\" not in text:
        return text
    return _UNESCAPE_RE.sub(_unescape_char, text)


_PER_MOUNT_ATTRS = {
    "ro": MountAttr.RDONLY,
    "nosuid": MountAttr.NOSUID,
    "nodev": MountAttr.NODEV,
    "noexec": MountAttr.NOEXEC,
    "noatime": MountAttr.NOATIME,
    "nodiratime": MountAttr.NODIRATIME,
    "nosymfollow": MountAttr.NOSYMFOLLOW,
    "idmapped": MountAttr.IDMAP,
}


def _attrs_from_options(options: str) -> MountAttr:
    attrs = 0
    relatime = False
    for opt in options.split(","):
        flag = _PER_MOUNT_ATTRS.get(opt)
        if flag is not None:
            attrs |= flag
        elif opt == "relatime":
            relatime = True
    # mountinfo prints "relatime" or "noatime"; neither means strictatime.
    if not relatime and not attrs & MountAttr.NOATIME:
        attrs |= MountAttr.STRICTATIME
    return MountAttr(attrs)


def _parse_line(line: str) -> LiveMount:
    # Fields are separated by single spaces; a field never contains one (escaped
    # as \040), but the source field may be empty, which gives two spaces in a row.
    parts = line.split(" ")
    try:
        sep = parts.index("-", 6)
    except ValueError:
        raise ValueError(f"mountinfo line without ' - ' separator: {line!r}") from None
    if len(parts) - sep != 4:
        raise ValueError(f"mountinfo line needs fstype, source and options after '-': {line!r}")
    mnt_id, parent, dev, root, mount_point, mount_opts = parts[:6]
    shared = slave = unbindable = False
    peer = master = propagate_from = None
    for tag in parts[6:sep]:
        name, _, value = tag.partition(":")
        if name == "shared":
            shared, peer = True, int(value)
        elif name == "master":
            slave, master = True, int(value)
        elif name == "propagate_from":
            propagate_from = int(value)
        elif name == "unbindable":
            unbindable = True
    fs_type, source, super_opts = parts[sep + 1 :]
    ro_rw, _, rest = super_opts.partition(",")
    major, _, minor = dev.partition(":")
    return LiveMount(
        mnt_id=None,
        mnt_id_old=int(mnt_id),
        parent_id=None,
        parent_id_old=int(parent),
        mount_point=unescape_mountinfo(mount_point),
        root=unescape_mountinfo(root),
        fs_type=fs_type,
        source=unescape_mountinfo(source),
        super_options=tuple(unescape_mountinfo(o) for o in rest.split(",")) if rest else (),
        super_readonly=ro_rw == "ro",
        attrs=_attrs_from_options(mount_opts),
        propagation=_propagation(shared, slave, unbindable),
        peer_group=peer,
        master=master,
        propagate_from=propagate_from,
        dev=(int(major), int(minor)),
    )


def parse_mountinfo(text: str) -> list[LiveMount]:
    """Parse mountinfo text (proc(5) format) into LiveMount records, in file order.

    Raises ValueError for a malformed line. Bytes that are not UTF-8 should be
    decoded with ``surrogateescape`` (as :func:`read_mountinfo` does).
    """
    return [_parse_line(line) for line in text.split("\n") if line]


def read_mountinfo(path: str = "/proc/self/mountinfo", *, beneath: Sequence[str] | None = None) -> list[LiveMount]:
    """Read and parse a mountinfo file; with ``beneath``, only mounts on or below those paths.

    Every line is looked at, but only a matching one is parsed into a record: the
    mount point field is compared in its escaped form, which is the same test
    (escaping is one-to-one and never touches ``/``).
    """
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", "surrogateescape")
    if beneath is None:
        return parse_mountinfo(text)
    paths = _normalize_paths(beneath)
    if "/" in paths:
        return parse_mountinfo(text)
    exact = {escape_mountinfo(p) for p in paths}
    prefixes = tuple(e + "/" for e in exact)
    out: list[LiveMount] = []
    for line in text.split("\n"):
        if not line:
            continue
        parts = line.split(" ", 5)
        if len(parts) < 6:
            _parse_line(line)  # raises the parser's ValueError for a malformed line
        point = parts[4]
        if point in exact or point.startswith(prefixes):
            out.append(_parse_line(line))
    return out
