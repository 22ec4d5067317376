"""The build-action scenario: a static userland runs chrooted in plans/build-action.yaml.

The action proves each part of the plan with its own exit code: it reads
/proc/self/status, writes /tmp, cannot write the read-only tools, reads the
tool, cannot write the read-only sysfs, uses the /dev binds, follows /dev/fd and
/dev/stdin, and opens /dev/ptmx to get a pty of its private devpts. Afterwards the
input tree can be removed and the mount table is what it was. The same action
runs through runner.run (in place and unshared), through the Python API, and
through ``mountplan run``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mountplan
from mountplan import runner
from mountplan.serve import Server
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

REPO = Path(__file__).parents[2]

# Each check has its own exit code so a failure names the broken part of the plan.
ACTION = """
grep -q '^Pid:' /proc/self/status || exit 10
echo ok > /tmp/out && [ "$(cat /tmp/out)" = ok ] || exit 11
touch /opt/tools/x 2> /tmp/tools.err && exit 12
grep -q 'Read-only file system' /tmp/tools.err || exit 13
[ "$(cat /opt/tools/tool)" = tool-v1 ] || exit 14
touch /sys/x 2> /dev/null && exit 15
[ -d /sys/kernel ] || exit 16
echo discard > /dev/null || exit 17
head -c 16 /dev/urandom > /tmp/random && [ -s /tmp/random ] || exit 18
[ -c /dev/tty ] && [ -c /dev/zero ] && [ -c /dev/full ] || exit 19
[ "$(readlink /dev/fd)" = /proc/self/fd ] && [ -e /dev/fd/0 ] && [ -e /dev/stdin ] || exit 20
echo to-stderr > /dev/stderr 2> /dev/null || exit 21
[ -d /dev/pts ] && [ -c /dev/pts/ptmx ] && [ -d /dev/shm ] || exit 22
exec 3<> /dev/ptmx || exit 23
[ -c /dev/pts/0 ] || exit 24
exec 3>&-
echo all-checks-passed > /done
"""
ARGV = ["/bin/sh", "-c", ACTION]


def assert_action_ran_and_cleaned(userland: str, code: int, before: list[str]) -> None:
    """Status 0, the marker the last line writes, a clean table, and a removable input tree."""
    assert code == 0, f"check {code} of the action failed (see ACTION)"
    assert Path(userland, "done").read_text() == "all-checks-passed\n"
    assert mount_table_snapshot() == before
    # Destroy removed every mountpoint it made: only what the action's author put there is left.
    assert sorted(os.listdir(userland)) == ["bin", "done", "toolchain"]
    shutil.rmtree(userland)
    assert not os.path.exists(userland)


@pytest.mark.parametrize("unshare", [False, True], ids=["here", "unshare"])
def test_build_action_through_runner(
    build_action: mountplan.Plan, userland: str, state_dir: str, unshare: bool
) -> None:
    """runner.run chrooted into the input root: every check passes, nothing is left behind."""
    before = mount_table_snapshot()
    code = runner.run(build_action, {"input": userland}, ARGV, chroot="input", unshare=unshare, state_dir=state_dir)
    assert_action_ran_and_cleaned(userland, code, before)


def test_build_action_through_api(build_action: mountplan.Plan, userland: str, state_dir: str) -> None:
    """mountplan.applied plus a subprocess that chroots itself: the embedding recipe works."""
    before = mount_table_snapshot()

    def enter_root() -> None:
        os.chroot(userland)
        os.chdir("/")

    with mountplan.applied(build_action, roots={"input": userland}, state_dir=state_dir):
        code = subprocess.run(ARGV, preexec_fn=enter_root, check=False).returncode
    assert_action_ran_and_cleaned(userland, code, before)


def test_build_action_through_cli(userland: str, state_dir: str) -> None:
    """`mountplan run PLAN --root input=DIR --chroot input -- CMD...` relays the action's status."""
    before = mount_table_snapshot()
    result = subprocess.run(
        [
            sys.executable, "-m", "mountplan", "run", "plans/build-action.yaml",
            "--root", f"input={userland}", "--state-dir", state_dir, "--chroot", "input", "--", *ARGV,
        ],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_action_ran_and_cleaned(userland, result.returncode, before)


def test_build_action_through_worker(userland: str, state_dir: str, tmp_path: Path) -> None:
    """Worker mode (what `mountplan serve` runs): apply over the socket with the root's fd, run the action, destroy."""
    before = mount_table_snapshot()
    socket_path = str(tmp_path / "mp.sock")
    server = Server(mountplan.load(REPO / "plans" / "build-action.yaml"), socket_path, state_dir=state_dir)
    server.bind()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def enter_root() -> None:
        os.chroot(userland)
        os.chdir("/")

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(30)
            sock.connect(socket_path)
            fd = os.open(userland, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                socket.send_fds(sock, [json.dumps({"format_version": 1, "op": "apply", "roots": {"input": 0}}).encode()], [fd])
            finally:
                os.close(fd)
            reply = json.loads(sock.recv(65536))
            assert reply["ok"] is True, reply
            code = subprocess.run(ARGV, preexec_fn=enter_root, check=False).returncode
            sock.send(json.dumps({"format_version": 1, "op": "destroy", "action": reply["action"]}).encode())
            assert json.loads(sock.recv(65536))["ok"] is True
    finally:
        server.stop()
        thread.join(30)
    assert_action_ran_and_cleaned(userland, code, before)


def test_action_fails_without_the_plan(userland: str) -> None:
    """Control: chrooted without the plan applied, the action stops at its first check (10)."""

    def enter_root() -> None:
        os.chroot(userland)
        os.chdir("/")

    assert subprocess.run(ARGV, preexec_fn=enter_root, check=False).returncode == 10
