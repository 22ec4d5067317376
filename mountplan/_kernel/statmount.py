"""Typed wrappers for statmount(2) and listmount(2) (Linux 6.8+)."""

from __future__ import annotations

import ctypes
import enum
import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from mountplan.errors import KernelError

from . import _libc
from .constants import MountAttr

__all__ = [
    "LISTMOUNT_REVERSE",
    "LSMT_ROOT",
    "StatmountBuffer",
    "StatmountMask",
    "StatmountResult",
    "iter_mounts",
    "listmount",
    "statmount",
    "statmount_idmap",
]

#: ``mnt_id`` for listmount meaning "the root of the namespace": list every mount.
LSMT_ROOT = 0xFFFF_FFFF_FFFF_FFFF
LISTMOUNT_REVERSE = 0x1

_REQ = struct.Struct("<IIQQQ")  # size, spare (mnt_ns_fd on 6.18), mnt_id, param, mnt_ns_id
_HEADER_SIZE = 512
_INITIAL_BUFFER = 4096
_MAX_BUFFER = 16 << 20

_SB_RDONLY = 0x1


class StatmountMask(enum.IntFlag):
    """``STATMOUNT_*`` request and answer bits."""

    SB_BASIC = 0x1
    MNT_BASIC = 0x2
    PROPAGATE_FROM = 0x4
    MNT_ROOT = 0x8
    MNT_POINT = 0x10
    FS_TYPE = 0x20
    MNT_NS_ID = 0x40
    MNT_OPTS = 0x80
    FS_SUBTYPE = 0x100
    SB_SOURCE = 0x200
    OPT_ARRAY = 0x400
    OPT_SEC_ARRAY = 0x800
    SUPPORTED_MASK = 0x1000
    MNT_UIDMAP = 0x2000
    MNT_GIDMAP = 0x4000


_STRING_FIELDS: tuple[tuple[str, StatmountMask, int], ...] = (
    ("mnt_root", StatmountMask.MNT_ROOT, 104),
    ("mnt_point", StatmountMask.MNT_POINT, 108),
    ("fs_type", StatmountMask.FS_TYPE, 36),
    ("mnt_opts", StatmountMask.MNT_OPTS, 4),
    ("fs_subtype", StatmountMask.FS_SUBTYPE, 120),
    ("sb_source", StatmountMask.SB_SOURCE, 124),
)


@dataclass(frozen=True, slots=True)
class StatmountResult:
    """What statmount returned. A field is ``None`` when its bit is not in ``mask``.

    The kernel leaves a string bit out of ``mask`` when the string is empty, so a
    requested-but-missing string is reported as ``None``, not ``""``: the caller
    decides what absence means (see :meth:`string`).
    """

    mask: StatmountMask
    requested: StatmountMask
    # SB_BASIC
    sb_dev_major: int | None = None
    sb_dev_minor: int | None = None
    sb_magic: int | None = None
    sb_flags: int | None = None
    # MNT_BASIC
    mnt_id: int | None = None
    mnt_parent_id: int | None = None
    mnt_id_old: int | None = None
    mnt_parent_id_old: int | None = None
    mnt_attr: MountAttr | None = None
    mnt_propagation: int | None = None
    mnt_peer_group: int | None = None
    mnt_master: int | None = None
    # PROPAGATE_FROM
    propagate_from: int | None = None
    # MNT_NS_ID
    mnt_ns_id: int | None = None
    # SUPPORTED_MASK
    supported_mask: StatmountMask | None = None
    # strings
    mnt_root: str | None = None
    mnt_point: str | None = None
    fs_type: str | None = None
    mnt_opts: str | None = None
    fs_subtype: str | None = None
    sb_source: str | None = None
    opt_array: tuple[str, ...] | None = None
    opt_sec_array: tuple[str, ...] | None = None

    @property
    def sb_readonly(self) -> bool | None:
        """The superblock is read-only (``SB_RDONLY``); mnt_opts never says ro/rw."""
        return None if self.sb_flags is None else bool(self.sb_flags & _SB_RDONLY)

    def string(self, name: str) -> str:
        """A requested string field, ``""`` when the kernel reported it empty."""
        value = getattr(self, name)
        if value is None:
            bit = {n: b for n, b, _ in _STRING_FIELDS}[name]
            if not self.requested & bit:
                raise ValueError(f"statmount field {name} was not requested")
            return ""
        assert isinstance(value, str)
        return value


def _request(mnt_id: int, param: int, ns_id: int) -> ctypes.Array[ctypes.c_char]:
    raw = _REQ.pack(_REQ.size, 0, mnt_id, param, ns_id)
    return ctypes.create_string_buffer(raw, len(raw))


def _cstring(buf: bytes, start: int) -> str:
    end = buf.index(b"\0", start)
    return buf[start:end].decode("utf-8", "surrogateescape")


def _string_array(buf: bytes, start: int, count: int) -> tuple[str, ...]:
    out: list[str] = []
    pos = start
    for _ in range(count):
        end = buf.index(b"\0", pos)
        out.append(buf[pos:end].decode("utf-8", "surrogateescape"))
        pos = end + 1
    return tuple(out)


_SB_BASIC, _MNT_BASIC, _PROPAGATE_FROM = 0x1, 0x2, 0x4
_MNT_NS_ID, _OPT_ARRAY, _OPT_SEC_ARRAY, _SUPPORTED_MASK = 0x40, 0x400, 0x800, 0x1000
_STRING_OFFSETS = tuple((name, int(bit), offset) for name, bit, offset in _STRING_FIELDS)


def _decode(raw: bytes, requested: StatmountMask) -> StatmountResult:
    # Plain ints here: enum arithmetic dominated the cost of reading a big table.
    (got,) = struct.unpack_from("<Q", raw, 8)
    fields: dict[str, object] = {}
    if got & _SB_BASIC:
        major, minor, magic, sb_flags = struct.unpack_from("<IIQI", raw, 16)
        fields.update(sb_dev_major=major, sb_dev_minor=minor, sb_magic=magic, sb_flags=sb_flags)
    if got & _MNT_BASIC:
        mnt_id, parent_id, id_old, parent_old, attr, propagation, peer, master = struct.unpack_from(
            "<QQII QQQQ", raw, 40
        )
        fields.update(
            mnt_id=mnt_id,
            mnt_parent_id=parent_id,
            mnt_id_old=id_old,
            mnt_parent_id_old=parent_old,
            mnt_attr=MountAttr(attr),
            mnt_propagation=propagation,
            mnt_peer_group=peer,
            mnt_master=master,
        )
    if got & _PROPAGATE_FROM:
        (fields["propagate_from"],) = struct.unpack_from("<Q", raw, 96)
    if got & _MNT_NS_ID:
        (fields["mnt_ns_id"],) = struct.unpack_from("<Q", raw, 112)
    if got & _SUPPORTED_MASK:
        (supported,) = struct.unpack_from("<Q", raw, 144)
        fields["supported_mask"] = StatmountMask(supported)
    strings = _HEADER_SIZE
    for name, bit, offset in _STRING_OFFSETS:
        if got & bit:
            (rel,) = struct.unpack_from("<I", raw, offset)
            fields[name] = _cstring(raw, strings + rel)
    if got & _OPT_ARRAY:
        num, rel = struct.unpack_from("<II", raw, 128)
        fields["opt_array"] = _string_array(raw, strings + rel, num)
    if got & _OPT_SEC_ARRAY:
        num, rel = struct.unpack_from("<II", raw, 136)
        fields["opt_sec_array"] = _string_array(raw, strings + rel, num)
    return StatmountResult(mask=StatmountMask(got), requested=requested, **fields)  # type: ignore[arg-type]


def statmount(mnt_id: int, mask: int, *, ns_id: int = 0) -> StatmountResult:
    """statmount(2): describe the mount with unique id ``mnt_id``.

    ``ns_id`` selects another mount namespace by its id (0: our own). The buffer
    grows on EOVERFLOW, so long option strings are never truncated.
    """
    req = _request(mnt_id, int(mask), ns_id)
    size = _INITIAL_BUFFER
    while True:
        buf = ctypes.create_string_buffer(size)
        ret = _libc.syscall(
            "statmount", req, buf, ctypes.c_size_t(size), ctypes.c_uint(0)
        )
        if ret >= 0:
            return _decode(buf.raw, StatmountMask(mask))
        err = -ret
        if err == errno.EOVERFLOW and size < _MAX_BUFFER:
            size *= 2
            continue
        raise KernelError(
            err,
            "statmount",
            paths=[f"mnt_id={mnt_id}"] + ([f"ns_id={ns_id}"] if ns_id else []),
            flags=_mask_names(mask),
            hint=_STATMOUNT_HINTS.get(err, ""),
        )


_STATMOUNT_HINTS = {
    errno.ENOENT: "no mount with this unique id in the namespace (unmounted, detached, or an old 32-bit id)",
    errno.ENOSYS: "statmount needs Linux 6.8 or newer",
    errno.EPERM: "the mount is not reachable from this process's root, or seccomp blocks statmount",
}


def _mask_names(mask: int) -> str:
    return "|".join(m.name for m in StatmountMask if m.name and m & mask) or "0"


class StatmountBuffer:
    """One request and one answer buffer reused across many statmount(2) calls.

    :func:`statmount` allocates and decodes everything into a
    :class:`StatmountResult`; reading a table of thousands of mounts spends most of
    its time doing exactly that. This object keeps the answer in place: call
    :meth:`call`, then read only the fields needed with :meth:`u32`, :meth:`u64`
    and :meth:`string` (offsets as in ``struct statmount``, kernel.md).
    """

    __slots__ = ("_addr", "_buf", "_req", "_req_arg", "_size", "_size_arg")

    def __init__(self, size: int = _INITIAL_BUFFER) -> None:
        self._req = ctypes.create_string_buffer(_REQ.size)
        self._req_arg = ctypes.byref(self._req)
        self._alloc(size)

    def _alloc(self, size: int) -> None:
        self._buf = ctypes.create_string_buffer(size)
        self._size = size
        self._size_arg = ctypes.c_size_t(size)
        self._addr = ctypes.addressof(self._buf)

    def call(self, mnt_id: int, mask: int, *, ns_id: int = 0) -> int:
        """statmount(2) into the buffer; return the answer's mask. Raises KernelError.

        The buffer doubles on EOVERFLOW (long option strings) up to 16 MiB.
        """
        _REQ.pack_into(self._req, 0, _REQ.size, 0, mnt_id, mask, ns_id)  # param is the mask
        while True:
            ret = _libc.syscall("statmount", self._req_arg, self._buf, self._size_arg, ctypes.c_uint(0))
            if ret >= 0:
                (got,) = _U64.unpack_from(self._buf, 8)
                return int(got)
            err = -ret
            if err == errno.EOVERFLOW and self._size < _MAX_BUFFER:
                self._alloc(self._size * 2)
                continue
            raise KernelError(
                err,
                "statmount",
                paths=[f"mnt_id={mnt_id}"] + ([f"ns_id={ns_id}"] if ns_id else []),
                flags=_mask_names(mask),
                hint=_STATMOUNT_HINTS.get(err, ""),
            )

    def u32(self, offset: int) -> int:
        """The u32 at ``offset`` of the last answer."""
        (value,) = _U32.unpack_from(self._buf, offset)
        return int(value)

    def u64(self, offset: int) -> int:
        """The u64 at ``offset`` of the last answer."""
        (value,) = _U64.unpack_from(self._buf, offset)
        return int(value)

    def unpack(self, fmt: struct.Struct, offset: int) -> tuple[int, ...]:
        """Several fixed-size fields of the last answer at once."""
        return fmt.unpack_from(self._buf, offset)

    def string(self, offset: int) -> str:
        """The string whose u32 offset (into the string area) is stored at ``offset``.

        Only meaningful when the answer's mask has the field's bit: the kernel
        leaves an empty string's bit out.
        """
        (rel,) = _U32.unpack_from(self._buf, offset)
        raw = ctypes.string_at(self._addr + _HEADER_SIZE + rel)
        return raw.decode("utf-8", "surrogateescape")


    def strings(self, offset: int) -> tuple[str, ...]:
        """A string array: its count is the u32 at ``offset``, its start the u32 after it.

        The kernel writes the elements back to back, each ending in a NUL.
        """
        count, rel = self.unpack(_ARRAY_AT, offset)
        out: list[str] = []
        position = self._addr + _HEADER_SIZE + rel
        for _ in range(count):
            raw = ctypes.string_at(position)
            out.append(raw.decode("utf-8", "surrogateescape"))
            position += len(raw) + 1
        return tuple(out)


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ARRAY_AT = struct.Struct("<II")
_OFF_MNT_ATTR, _OFF_UIDMAP, _OFF_GIDMAP = 64, 152, 160
_MOUNT_ATTR_IDMAP = 0x100000


def statmount_idmap(mnt_id: int) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The uid and gid map of the mount with unique id ``mnt_id``, as ``"inside outside count"`` lines.

    Outside ids are shown as this process's user namespace sees them (an id it
    cannot see reads 4294967295). ``((), ())`` for a mount that is not idmapped;
    None where the kernel cannot tell (``STATMOUNT_MNT_UIDMAP`` is Linux 6.15;
    older kernels refuse the bit with EINVAL, or have no statmount at all).
    """
    sb = StatmountBuffer()
    mask = int(StatmountMask.MNT_BASIC | StatmountMask.MNT_UIDMAP | StatmountMask.MNT_GIDMAP)
    try:
        got = sb.call(mnt_id, mask)
    except KernelError as exc:
        if exc.errno in {errno.EINVAL, errno.ENOSYS, errno.EPERM}:
            return None
        raise
    if not got & StatmountMask.MNT_BASIC:
        return None
    if not sb.u64(_OFF_MNT_ATTR) & _MOUNT_ATTR_IDMAP:
        return (), ()
    if not got & StatmountMask.MNT_UIDMAP:
        return None  # idmapped, but this kernel does not report maps
    uids = sb.strings(_OFF_UIDMAP)
    gids = sb.strings(_OFF_GIDMAP) if got & StatmountMask.MNT_GIDMAP else ()
    return uids, gids


def listmount(
    mnt_id: int = LSMT_ROOT, *, last_id: int = 0, reverse: bool = False, batch: int = 4096
) -> list[int]:
    """listmount(2): up to ``batch`` unique ids of mounts beneath ``mnt_id``.

    Ids come in ascending order (descending with ``reverse``) and start after
    ``last_id``; pass the last id of one page to get the next. LSMT_ROOT lists the
    whole namespace.
    """
    if batch <= 0:
        raise ValueError(f"listmount batch must be positive, got {batch}")
    req = _request(mnt_id, last_id, 0)
    buf = (ctypes.c_uint64 * batch)()
    flags = LISTMOUNT_REVERSE if reverse else 0
    ret = _libc.syscall("listmount", req, buf, ctypes.c_size_t(batch), ctypes.c_uint(flags))
    if ret < 0:
        shown = "LSMT_ROOT" if mnt_id == LSMT_ROOT else str(mnt_id)
        raise KernelError(
            -ret,
            "listmount",
            paths=[f"mnt_id={shown}"],
            flags=f"last_id={last_id}" + (" REVERSE" if reverse else ""),
            hint=_STATMOUNT_HINTS.get(-ret, "").replace("statmount", "listmount"),
        )
    return list(buf[:ret])


def iter_mounts(mnt_id: int = LSMT_ROOT, *, reverse: bool = False, batch: int = 4096) -> Iterator[int]:
    """Every unique mount id beneath ``mnt_id``, fetched ``batch`` at a time."""
    last = 0
    while True:
        ids = listmount(mnt_id, last_id=last, reverse=reverse, batch=batch)
        yield from ids
        if len(ids) < batch:
            return
        last = ids[-1]
