"""Emulate an older kernel with a real seccomp filter: chosen syscalls answer an errno.

``install(profile)`` sets ``PR_SET_NO_NEW_PRIVS`` (so it needs no privilege) and
loads a classic-BPF filter that makes each syscall the profile denies return
``SECCOMP_RET_ERRNO | errno`` (ENOSYS for an old kernel, EPERM for a container
profile). The filter is inherited across fork and kept across execve, so
everything the process starts afterwards sees the same "kernel".

Run as ``python -m mountplan._kernel.seccomp PROFILE -- CMD...`` (what
``scripts/emulate-kernel`` does): install the filter, export
``MOUNTPLAN_KERNEL_PROFILE=PROFILE`` for the statx seam, exec CMD.

This is a test tool, not a sandbox: only the native ABI is filtered (a call made
through another ABI, such as i386 ``int 0x80`` on x86_64, is allowed).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Sequence

from mountplan.errors import KernelError

from . import _libc
from .emulation import ENV_VAR, PROFILES, Profile, profile

__all__ = ["build_filter", "install", "load_filter", "main"]

# <linux/filter.h>, <linux/seccomp.h>, <linux/audit.h>, <linux/prctl.h>
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_RET_K = 0x06 | 0x00
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_SET_MODE_FILTER = 1
_PR_SET_NO_NEW_PRIVS = 38
# struct seccomp_data: int nr; __u32 arch; ...
_OFFSET_NR = 0
_OFFSET_ARCH = 4

#: machine → (AUDIT_ARCH_*, seccomp(2) number). Both use the generic numbers from
#: 424 up for the mount API (kernel.md), so the profiles' numbers hold there.
_ARCHES: dict[str, tuple[int, int]] = {
    "x86_64": (0xC000003E, 317),
    "aarch64": (0xC00000B7, 277),
}


def _arch() -> tuple[int, int]:
    machine = platform.machine()
    try:
        return _ARCHES[machine]
    except KeyError:
        raise KernelError(
            errno.EOPNOTSUPP,
            "seccomp",
            hint=f"no kernel-emulation filter for {machine}; supported: {', '.join(_ARCHES)}",
        ) from None


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    # struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }
    return struct.pack("=HBBI", code, jt, jf, k)


def build_filter(denied: dict[str, int], audit_arch: int) -> bytes:
    """The BPF program: deny each listed syscall with its errno, allow everything else.

    A call from a different ABI than ``audit_arch`` is allowed untouched: its numbers
    mean other syscalls.
    """
    numbers = sorted((_libc.SYSCALL_NUMBERS[name], err) for name, err in denied.items())
    prog = [
        _insn(_BPF_LD_W_ABS, _OFFSET_ARCH),
        _insn(_BPF_JMP_JEQ_K, audit_arch, jt=0, jf=2 * len(numbers) + 1),
        _insn(_BPF_LD_W_ABS, _OFFSET_NR),
    ]
    for nr, err in numbers:
        prog.append(_insn(_BPF_JMP_JEQ_K, nr, jt=0, jf=1))
        prog.append(_insn(_BPF_RET_K, _SECCOMP_RET_ERRNO | (err & 0xFFFF)))
    prog.append(_insn(_BPF_RET_K, _SECCOMP_RET_ALLOW))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(emulated: Profile) -> None:
    """Load ``emulated``'s filter into this process (and everything it starts). Irreversible."""
    audit_arch, _ = _arch()
    load_filter(build_filter(emulated.denied, audit_arch))


def load_filter(code: bytes) -> None:
    """Set NO_NEW_PRIVS and load the BPF program ``code`` with seccomp(2). Irreversible."""
    _, seccomp_nr = _arch()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    prctl = _libc._libc.prctl
    prctl.restype = ctypes.c_int
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    if prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), one, zero, zero, zero) != 0:
        raise KernelError(ctypes.get_errno(), "prctl", flags="PR_SET_NO_NEW_PRIVS")
    ret = _libc._syscall(
        ctypes.c_long(seccomp_nr),
        ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(0),
        ctypes.byref(prog),
    )
    if ret != 0:
        raise KernelError(ctypes.get_errno(), "seccomp", flags="SECCOMP_SET_MODE_FILTER")


_USAGE = """usage: python -m mountplan._kernel.seccomp PROFILE -- COMMAND [ARG...]
       python -m mountplan._kernel.seccomp --list

Run COMMAND (and everything it starts) under an emulated older kernel.
"""


def _list() -> str:
    return "".join(f"{p.name:16} {p.description}\n" for p in PROFILES.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: install PROFILE's filter, export it for the statx seam, exec COMMAND."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--list"]:
        sys.stdout.write(_list())
        return 0
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write(_USAGE + "\nprofiles:\n" + _list())
        return 2
    try:
        emulated = profile(args[0])
    except ValueError as exc:
        sys.stderr.write(f"emulate-kernel: {exc}\n")
        return 2
    try:
        install(emulated)
    except KernelError as exc:
        sys.stderr.write(f"emulate-kernel: {exc}\n")
        return 1
    os.environ[ENV_VAR] = emulated.name
    command = args[2:]
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"emulate-kernel: {command[0]}: {exc.strerror}\n")
        return 127


if __name__ == "__main__":
    sys.exit(main())
