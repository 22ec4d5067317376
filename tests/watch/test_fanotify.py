"""fanotify mount events: the constants and record layout checked against the running kernel, and what it misses."""

from __future__ import annotations

import os
import select
import struct
import subprocess
from collections.abc import Callable

import pytest
from _watching import move, remount_ro

from mountplan._kernel import fsconfig_reconfigure, fsconfig_set_string, fspick, statx_mount_ids
from mountplan._kernel.fanotify import (
    FAN_EVENT_INFO_TYPE_MNT,
    FanotifyEvent,
    MountEvent,
    open_mount_namespace_watch,
    parse_mount_events,
    read_mount_events,
)
from mountplan.errors import KernelError


def _record(mask: int, *infos: bytes) -> bytes:
    body = b"".join(infos)
    return struct.pack("<IBBHQii", 24 + len(body), 3, 0, 24, mask, -1, 0) + body


def _mnt_info(mnt_id: int, info_type: int = FAN_EVENT_INFO_TYPE_MNT) -> bytes:
    return struct.pack("<BBH4xQ", info_type, 0, 16, mnt_id)


@pytest.mark.parametrize(
    ("buf", "expected"),
    [
        (_record(0x01000000, _mnt_info(2**31 + 5)), [MountEvent(FanotifyEvent.MNT_ATTACH, 2**31 + 5)]),
        (
            _record(0x02000000, _mnt_info(7)) + _record(0x03000000, _mnt_info(8)),
            [MountEvent(FanotifyEvent.MNT_DETACH, 7), MountEvent(FanotifyEvent.MNT_ATTACH | FanotifyEvent.MNT_DETACH, 8)],
        ),
        (_record(0x4000), [MountEvent(FanotifyEvent.Q_OVERFLOW, None)]),
        (_record(0x01000000, struct.pack("<BBH4x", 99, 0, 8), _mnt_info(9)), [MountEvent(FanotifyEvent.MNT_ATTACH, 9)]),
        (b"", []),
    ],
    ids=["attach", "detach-then-move", "overflow-without-record", "unknown-record-skipped", "empty"],
)
def test_parse_mount_events(buf: bytes, expected: list[MountEvent]) -> None:
    assert parse_mount_events(buf) == expected


@pytest.mark.parametrize(
    "buf",
    [
        _record(0x01000000, _mnt_info(1))[:20],
        struct.pack("<IBBHQii", 200, 3, 0, 24, 0x01000000, -1, 0),
        struct.pack("<IBBHQii", 24, 2, 0, 24, 0x01000000, -1, 0),
        _record(0x01000000, struct.pack("<BBH4xQ", 7, 0, 64, 1)),
    ],
    ids=["truncated-header", "event-longer-than-buffer", "old-metadata-version", "info-longer-than-event"],
)
def test_malformed_buffers_are_refused(buf: bytes) -> None:
    with pytest.raises(ValueError, match="fanotify"):
        parse_mount_events(buf)


def _watch_or_skip() -> int:
    try:
        return open_mount_namespace_watch().detach()
    except KernelError as exc:
        pytest.skip(f"no fanotify mount events here: {exc}")


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _wait(fd: int) -> list[MountEvent]:
    select.select([fd], [], [], 2.0)
    return read_mount_events(fd)


@pytest.mark.mountns
def test_attach_and_detach_carry_the_unique_mount_id(root_dir: str) -> None:
    """A mount gives MNT_ATTACH and its unmount MNT_DETACH, each naming the id statx reports as unique."""
    fan = _watch_or_skip()
    target = f"{root_dir}/t"
    os.mkdir(target)
    _sh("mount", "-t", "tmpfs", "x", target)
    ids = statx_mount_ids(-100, target, flags=0)  # type: ignore[arg-type]
    assert ids.unique
    assert _wait(fan) == [MountEvent(FanotifyEvent.MNT_ATTACH, ids.mnt_id)]
    _sh("umount", target)
    assert _wait(fan) == [MountEvent(FanotifyEvent.MNT_DETACH, ids.mnt_id)]
    assert read_mount_events(fan) == []  # drained: a non-blocking read finds nothing more


@pytest.mark.mountns
def test_a_move_is_attach_and_detach_at_once(root_dir: str) -> None:
    """mount --move reports one event with both bits, for the moved mount."""
    fan = _watch_or_skip()
    for name in ("a", "b"):
        os.mkdir(f"{root_dir}/{name}")
    _sh("mount", "-t", "tmpfs", "x", f"{root_dir}/a")
    (attached,) = _wait(fan)
    move(f"{root_dir}/a", f"{root_dir}/b")
    assert _wait(fan) == [MountEvent(FanotifyEvent.MNT_ATTACH | FanotifyEvent.MNT_DETACH, attached.mnt_id)]


@pytest.mark.mountns
@pytest.mark.parametrize(
    "remount",
    [
        pytest.param(remount_ro, id="remount-ro"),
        pytest.param(lambda target: _sh("mount", "-o", "remount,bind,noexec", target), id="remount-bind-noexec"),
    ],
)
def test_remounts_are_not_fanotify_events_but_mountinfo_signals_them(root_dir: str, remount: Callable[[str], None]) -> None:
    """Why watch() always polls mountinfo too: a remount attaches and detaches nothing."""
    fan = _watch_or_skip()
    target = f"{root_dir}/t"
    os.mkdir(target)
    _sh("mount", "-t", "tmpfs", "x", target)
    _wait(fan)
    mountinfo = os.open("/proc/self/mountinfo", os.O_RDONLY)
    poller = select.poll()
    poller.register(mountinfo, select.POLLPRI)
    poller.register(fan, select.POLLIN)
    poller.poll(0)  # consume the mount's own signal
    remount(target)
    ready = dict(poller.poll(1000))
    assert ready.get(mountinfo, 0) & select.POLLPRI
    assert fan not in ready


def _reconfigure_size(target: str) -> None:
    with fspick(-100, target) as ctx:
        fsconfig_set_string(ctx.fileno(), "size", "8M")
        fsconfig_reconfigure(ctx.fileno())


@pytest.mark.mountns
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_reconfigure_size, id="fspick-reconfigure"),
        pytest.param(lambda target: _sh("mount", "--make-shared", target), id="mount2-make-shared"),
    ],
)
def test_some_changes_are_signalled_by_neither(root_dir: str, change: Callable[[str], None]) -> None:
    """Why watch() has a resync timer: a superblock reconfigured via fspick, or propagation changed with
    mount(2) MS_SHARED, wakes neither fanotify nor the mountinfo poll (mount_setattr does signal)."""
    fan = _watch_or_skip()
    target = f"{root_dir}/t"
    os.mkdir(target)
    _sh("mount", "-t", "tmpfs", "-o", "size=4M", "x", target)
    _wait(fan)
    mountinfo = os.open("/proc/self/mountinfo", os.O_RDONLY)
    poller = select.poll()
    poller.register(mountinfo, select.POLLPRI)
    poller.register(fan, select.POLLIN)
    poller.poll(0)  # consume the mount's own signal
    change(target)
    assert poller.poll(300) == []
