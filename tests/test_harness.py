"""The test harness itself: the host guard, the sandbox's namespaces, its fallbacks and its death."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from mountplan._kernel import _libc
from mountplan._kernel.constants import AtFlag, Propagation
from mountplan._kernel.namespaces import enter_private_namespaces, prctl_get_pdeathsig
from mountplan._kernel.syscalls import mount_setattr
from mountplan.errors import KernelError
from mountplan.testing import (
    CgroupNamespaceUnavailable,
    describe_mount_table_changes,
    is_privileged,
    parse_mount_records,
    read_mount_records,
    run_in_sandbox,
)

# --- the host guard -------------------------------------------------------------

HOST = """\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:5 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
50 22 0:40 / /mnt/with\\040space rw,relatime master:3 - tmpfs my\\040src rw,size=1024k
"""


def changed(old: str, new: str, text: str = HOST) -> list[str]:
    """The guard's report for ``text`` with one substring replaced."""
    assert old in text
    return describe_mount_table_changes(
        parse_mount_records(text), parse_mount_records(text.replace(old, new))
    )


def test_guard_reports_nothing_for_the_same_table_with_other_ids() -> None:
    """Mount ids, parent ids and device numbers may differ: they say which mount, not what it is."""
    renumbered = HOST.replace("41 31 0:38", "77 31 0:99").replace("50 22 0:40", "41 22 0:41")
    assert describe_mount_table_changes(parse_mount_records(HOST), parse_mount_records(renumbered)) == []


def test_guard_reports_a_changed_cgroup2_super_option_with_the_same_mount_id() -> None:
    """nsdelegate appearing on the host's cgroup2 (same id, same mount) is a change, named as machine-wide."""
    report = changed("cgroup2 cgroup2 rw", "cgroup2 cgroup2 rw,nsdelegate")
    assert report == [
        "~ /sys/fs/cgroup/unified (cgroup2): super options +nsdelegate",
        (
            "! cgroup2 flags changed machine-wide (+nsdelegate): "
            "a cgroup2 mount or remount was made from the initial cgroup namespace"
        ),
    ]


def test_guard_reports_a_cleared_cgroup2_flag() -> None:
    """A flag disappearing (a mount without it from the initial namespace) is reported too."""
    text = HOST.replace("cgroup2 cgroup2 rw", "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot")
    report = changed("rw,nsdelegate,memory_recursiveprot", "rw,nsdelegate", text)
    assert report[0] == "~ /sys/fs/cgroup/unified (cgroup2): super options -memory_recursiveprot"
    assert report[1].startswith("! cgroup2 flags changed machine-wide (-memory_recursiveprot)")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "tmpfs ro,mode=755",
            "tmpfs rw,mode=755",
            "~ /sys/fs/cgroup (tmpfs): super options +rw -ro",
            id="super-ro",
        ),
        pytest.param(
            "rw,size=1024k",
            "rw,size=2048k",
            "~ /mnt/with\\040space (tmpfs): super options +size=2048k -size=1024k",
            id="super-value",
        ),
        pytest.param(
            "/proc rw,nosuid,nodev,noexec,relatime",
            "/proc rw,nosuid,nodev,relatime",
            "~ /proc (proc): mount options -noexec",
            id="mount-option",
        ),
        pytest.param(
            "relatime shared:9 -",
            "relatime -",
            "~ /sys/fs/cgroup/unified (cgroup2): propagation shared:9 -> private",
            id="propagation",
        ),
        pytest.param(
            "master:3",
            "shared:7 master:3",
            "~ /mnt/with\\040space (tmpfs): propagation master:3 -> master:3 shared:7",
            id="peer-group-joined",
        ),
    ],
)
def test_guard_reports_each_changed_field(old: str, new: str, expected: str) -> None:
    """Mount options, super options and propagation of a host mount are all compared."""
    assert changed(old, new) == [expected]


def test_guard_reports_no_machine_wide_line_for_other_filesystems() -> None:
    """Only cgroup2's super options are machine-wide; a tmpfs change is that mount's own."""
    assert not [line for line in changed("rw,size=1024k", "rw,size=1k") if line.startswith("!")]


def test_guard_reports_added_removed_and_replaced_mounts() -> None:
    """A new mount, a gone mount, and one replaced by another type at the same place."""
    stacked = HOST + "60 50 0:50 / /mnt/with\\040space rw,relatime - tmpfs my\\040src rw,size=1024k\n"
    assert describe_mount_table_changes(parse_mount_records(HOST), parse_mount_records(stacked)) == [
        "+ /mnt/with\\040space / tmpfs my\\040src rw,relatime rw,size=1024k private"
    ]
    assert changed("23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n", "") == [
        "- /proc / proc proc rw,nosuid,nodev,noexec,relatime rw private"
    ]
    assert changed("- overlay overlay", "- tmpfs tmpfs") == [
        "- / / overlay overlay rw,relatime rw,lowerdir=/l,upperdir=/u,workdir=/w private",
        "+ / / tmpfs tmpfs rw,relatime rw,lowerdir=/l,upperdir=/u,workdir=/w private",
    ]


def test_guard_reads_every_line_of_the_real_table() -> None:
    """Each line of this process's mountinfo becomes one record with a mount point and a type."""
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    records = read_mount_records()
    assert len(records) == len(lines)
    assert all(r.mount_point.startswith("/") and r.fs_type for r in records)


# --- the cgroup namespace ---------------------------------------------------------


@pytest.fixture
def host_cgroup_namespace() -> str:
    """The cgroup namespace of the pytest process (fixtures run outside the sandbox)."""
    return os.readlink("/proc/self/ns/cgroup")


@pytest.mark.mountns
@pytest.mark.cgroupns
def test_cgroupns_tests_run_in_a_new_cgroup_namespace(host_cgroup_namespace: str) -> None:
    """A test marked cgroupns is not in the caller's cgroup namespace, whose cgroup2 flags are global."""
    assert os.readlink("/proc/self/ns/cgroup") != host_cgroup_namespace
    with open("/proc/self/cgroup") as f:
        # The namespace is rooted at our own cgroup, so we see ourselves at its root.
        assert "0::/\n" in f.read().splitlines(keepends=True)


@pytest.mark.mountns
def test_every_sandbox_gets_a_new_cgroup_namespace_when_the_kernel_allows(host_cgroup_namespace: str) -> None:
    """Without the marker the sandbox still enters a cgroup namespace (here the kernel allows it)."""
    assert os.readlink("/proc/self/ns/cgroup") != host_cgroup_namespace


def _refuse_cgroup_namespace() -> None:
    raise KernelError(errno.EPERM, "unshare", flags="NEWCGROUP")


def test_required_cgroup_namespace_that_cannot_be_made_is_reported_not_run() -> None:
    """If the kernel refuses a cgroup namespace, a function that needs one does not run at all."""
    ran = os.pipe()
    try:
        with mock.patch("mountplan.testing.enter_cgroup_namespace", _refuse_cgroup_namespace):
            with pytest.raises(CgroupNamespaceUnavailable, match="EPERM"):
                run_in_sandbox(os.write, ran[1], b"ran", require_cgroupns=True)
            # Not required: the other namespaces are still made and the function runs.
            assert run_in_sandbox(os.write, ran[1], b"ran") == 3
        os.close(ran[1])
        assert os.read(ran[0], 10) == b"ran"
    finally:
        os.close(ran[0])


_REFUSING_CONFTEST = """
import errno as _errno

import mountplan.testing
from mountplan.errors import KernelError


def _refuse() -> None:
    raise KernelError(_errno.EPERM, "unshare", flags="NEWCGROUP")


mountplan.testing.enter_cgroup_namespace = _refuse
"""


def test_cgroupns_test_is_skipped_with_the_reason_when_no_cgroup_namespace_can_be_made(
    tmp_path: Path,
) -> None:
    """mountplan's pytest plugin turns CgroupNamespaceUnavailable into a skip that names the kernel's refusal."""
    (tmp_path / "conftest.py").write_text(
        (Path(__file__).parent / "conftest.py").read_text() + _REFUSING_CONFTEST
    )
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    mountns: m\n    cgroupns: c\n    rootonly: r\n"
    )
    (tmp_path / "test_it.py").write_text(
        "import pytest\n\n\n@pytest.mark.cgroupns\ndef test_needs_it():\n    assert False\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "mounts cgroup2, which is safe only from a new cgroup namespace" in result.stdout
    assert "EPERM" in result.stdout


# --- the mount_setattr fallback ---------------------------------------------------

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000


def refuse_syscall(nr: int, err: int) -> None:
    """Install a seccomp filter in this process: syscall ``nr`` fails with ``err``, as a container's profile does.

    The filter does not check the architecture: it only lives in a throwaway
    sandbox process that makes native calls.
    """
    # seccomp_data.nr is at offset 0; BPF: A = nr; if A == nr then ERRNO else ALLOW.
    program = [
        (0x20, 0, 0, 0),  # BPF_LD | BPF_W | BPF_ABS
        (0x15, 0, 1, nr),  # BPF_JMP | BPF_JEQ | BPF_K
        (0x06, 0, 0, _SECCOMP_RET_ERRNO | err),  # BPF_RET | BPF_K
        (0x06, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *op) for op in program))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(code))  # struct sock_fprog, native alignment
    buf = ctypes.create_string_buffer(fprog)
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    assert prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) == 0, os.strerror(ctypes.get_errno())
    assert prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(buf), 0, 0) == 0, os.strerror(
        ctypes.get_errno()
    )


def propagation_fields() -> set[str]:
    """The optional (propagation) fields present anywhere in this process's mount table."""
    return {field.partition(":")[0] for record in read_mount_records() for field in record.propagation}


def _enter_nested_sandbox_with_mount_setattr_refused(err: int) -> set[str]:
    # Make every mount of this sandbox shared, so "private" afterwards is the fallback's work.
    mount_setattr(-100, "/", AtFlag.RECURSIVE, propagation=Propagation.SHARED)
    assert "shared" in propagation_fields()
    refuse_syscall(_libc.SYSCALL_NUMBERS["mount_setattr"], err)
    with pytest.raises(KernelError) as refused:
        mount_setattr(-100, "/", AtFlag.RECURSIVE, propagation=Propagation.PRIVATE)
    assert refused.value.errno == err  # the filter is in force
    enter_private_namespaces(as_root=is_privileged())
    return propagation_fields()


@pytest.mark.mountns
@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EPERM], ids=["ENOSYS-old-kernel", "EPERM-seccomp"])
def test_private_namespaces_without_mount_setattr_fall_back_to_mount(err: int) -> None:
    """Where mount_setattr is missing or filtered, every mount is still made private (classic mount(2))."""
    assert _enter_nested_sandbox_with_mount_setattr_refused(err) == set()


@pytest.mark.mountns
def test_other_mount_setattr_errors_are_not_papered_over() -> None:
    """EINVAL is a real error: the fallback is for ENOSYS and EPERM only."""
    with pytest.raises(KernelError) as raised:
        _enter_nested_sandbox_with_mount_setattr_refused(errno.EINVAL)
    assert raised.value.errno == errno.EINVAL and raised.value.op == "mount_setattr"


# --- dying with the parent --------------------------------------------------------


@pytest.mark.mountns
def test_sandboxed_function_runs_with_a_parent_death_signal() -> None:
    """pid 1 of the sandbox has PR_SET_PDEATHSIG = SIGKILL."""
    assert prctl_get_pdeathsig() == signal.SIGKILL


def _announce_and_sleep(write_fd: int) -> None:
    # /proc is still the caller's procfs here, so /proc/self names our pid out there.
    os.write(write_fd, os.readlink("/proc/self").encode() + b"\n")
    time.sleep(60)


def _parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def test_sandbox_dies_when_its_caller_is_killed() -> None:
    """SIGKILL the process that called run_in_sandbox: both sandbox processes die within seconds."""
    read_fd, write_fd = os.pipe()
    caller = os.fork()
    if caller == 0:  # a stand-in for a pytest that gets killed
        try:
            os.close(read_fd)
            run_in_sandbox(_announce_and_sleep, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    pidfds: list[int] = []
    try:
        ready, _, _ = select.select([read_fd], [], [], 30)
        assert ready, "the sandbox did not start"
        inner = int(os.read(read_fd, 64).split(b"\n")[0])
        middle = _parent_pid(inner)
        assert _parent_pid(middle) == caller
        pidfds = [os.pidfd_open(inner), os.pidfd_open(middle)]
        os.kill(caller, signal.SIGKILL)
        os.waitpid(caller, 0)
        deadline = time.monotonic() + 10
        alive = list(pidfds)
        while alive and time.monotonic() < deadline:
            ready, _, _ = select.select(alive, [], [], deadline - time.monotonic())
            alive = [fd for fd in alive if fd not in ready]
        assert not alive, "sandbox processes outlived their killed caller"
    finally:
        for fd in pidfds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(fd)
        os.close(read_fd)


def test_sandbox_child_exits_at_once_if_its_parent_is_already_gone() -> None:
    """The check after arming the signal: a parent that died before it leaves the child exiting with 1."""
    from mountplan.testing import _die_with_parent

    pid = os.fork()
    if pid == 0:
        try:
            _die_with_parent(lambda: False)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
