"""run --unshare: which namespaces the command gets new (net, ipc, uts, cgroup) and which it shares when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mountplan
from mountplan import runner
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

KINDS = ("net", "ipc", "uts", "cgroup", "mnt", "pid")

# What the command sees: the inode of each of its namespaces, its network
# interfaces and whether loopback is up (SIOCGIFFLAGS; IFF_UP is bit 0).
PROBE = """
import fcntl, json, os, socket, struct, sys
ns = {kind: os.stat(f"/proc/self/ns/{kind}").st_ino for kind in sys.argv[2].split(",")}
with open("/proc/self/net/dev") as f:
    interfaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), 0x8913, struct.pack("16sH", b"lo", 0)))[1]
with open(sys.argv[1], "w") as f:
    json.dump({"ns": ns, "interfaces": interfaces, "lo_up": bool(flags & 1)}, f)
"""


def _callers() -> dict[str, int]:
    return {kind: os.stat(f"/proc/self/ns/{kind}").st_ino for kind in KINDS}


def _probe(tmp_path: Path) -> tuple[list[str], Path]:
    out = tmp_path / "seen.json"
    return [sys.executable, "-c", PROBE, str(out), ",".join(KINDS)], out


def _new_ones(seen: dict[str, int]) -> set[str]:
    caller = _callers()
    return {kind for kind in KINDS if seen[kind] != caller[kind]}


def test_unshare_gives_the_command_every_namespace_new(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """unshare=True: new mount, pid, net, ipc, uts and cgroup namespaces; the net one has only lo, down."""
    before = mount_table_snapshot()
    argv, out = _probe(tmp_path)
    code = runner.run(small_plan, {"input": root_dir}, argv, unshare=True, state_dir=state_dir)
    assert code == 0
    seen = json.loads(out.read_text())
    assert _new_ones(seen["ns"]) == set(KINDS)
    assert seen["interfaces"] == ["lo"]
    assert seen["lo_up"] is False
    assert mount_table_snapshot() == before


def test_shared_namespaces_stay_the_callers(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """Asked for uts and cgroup only, the command keeps the caller's net and ipc namespaces."""
    argv, out = _probe(tmp_path)
    code = runner.run(
        small_plan, {"input": root_dir}, argv, unshare={runner.Namespace.UTS, "cgroup"}, state_dir=state_dir
    )
    assert code == 0
    seen = json.loads(out.read_text())
    assert _new_ones(seen["ns"]) == {"mnt", "pid", "uts", "cgroup"}
    assert "lo" in seen["interfaces"]


def test_no_extra_namespace_means_only_mount_and_pid(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """An empty selection still unshares mount and pid (the mounts never reach the caller), nothing else."""
    before = mount_table_snapshot()
    argv, out = _probe(tmp_path)
    code = runner.run(small_plan, {"input": root_dir}, argv, unshare=[], state_dir=state_dir)
    assert code == 0
    assert _new_ones(json.loads(out.read_text())["ns"]) == {"mnt", "pid"}
    assert mount_table_snapshot() == before


def test_an_unknown_namespace_is_refused_before_anything_is_mounted(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str
) -> None:
    """A misspelt namespace raises ExecutionError naming the known ones; nothing is mounted."""
    before = mount_table_snapshot()
    with pytest.raises(mountplan.ExecutionError, match="unknown namespace 'nett'.*net, ipc, uts, cgroup, user"):
        runner.run(small_plan, {"input": root_dir}, ["/bin/true"], unshare=["nett"], state_dir=state_dir)
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mountplan", *args], capture_output=True, text=True, check=False)


def test_cli_share_net_keeps_the_callers_network(
    small_plan_path: str, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """`run --unshare --share-net`: the command shares the caller's net namespace; ipc, uts, cgroup are new."""
    argv, out = _probe(tmp_path)
    common = [small_plan_path, "--root", f"input={root_dir}", "--state-dir", state_dir, "--unshare"]
    result = _cli("run", *common, "--share-net", "--", *argv)
    assert result.returncode == 0, result.stderr
    assert _new_ones(json.loads(out.read_text())["ns"]) == {"mnt", "pid", "ipc", "uts", "cgroup"}
    result = _cli("run", *common, "--share", "ipc,uts", "--share", "cgroup", "--", *argv)
    assert result.returncode == 0, result.stderr
    assert _new_ones(json.loads(out.read_text())["ns"]) == {"mnt", "pid", "net"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--share", "net"], "add --unshare"),
        (["--unshare", "--share", "net,bogus"], "--share bogus: not a namespace to share"),
        (["--unshare", "--share", "user"], "--share user: not a namespace to share"),
    ],
    ids=["share-without-unshare", "unknown", "user"],
)
def test_cli_bad_share_is_a_usage_error(
    small_plan_path: str, root_dir: str, state_dir: str, options: list[str], message: str
) -> None:
    """A --share the command line cannot honour exits 2 with one line, before anything is mounted."""
    before = mount_table_snapshot()
    result = _cli("run", small_plan_path, "--root", f"input={root_dir}", "--state-dir", state_dir, *options, "--", "true")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert mount_table_snapshot() == before
    assert os.listdir(root_dir) == []


def test_a_user_namespace_on_request_maps_the_caller_to_root(
    small_plan: mountplan.Plan, root_dir: str, state_dir: str, tmp_path: Path
) -> None:
    """unshare={"user"}: a new user namespace (even as root) in which the command is uid 0."""
    out = tmp_path / "user"
    script = f"import os; open({str(out)!r}, 'w').write(f'{{os.stat(\"/proc/self/ns/user\").st_ino}} {{os.getuid()}}')"
    code = runner.run(small_plan, {"input": root_dir}, [sys.executable, "-c", script], unshare={"user"}, state_dir=state_dir)
    assert code == 0
    inode, uid = out.read_text().split()
    assert int(inode) != os.stat("/proc/self/ns/user").st_ino
    assert uid == "0"
