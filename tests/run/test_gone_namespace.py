"""What a SIGKILLed `mountplan run --unshare` leaves on its roots: `recover` tidies it once its namespace is gone.

The mounts die with the run's namespace; the mountpoints it created in the root
and its planned objects there stay. On main e790abe `recover` refused the
instance (written in another mount namespace) and left them, and every killed
run added one more instance to the state directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mountplan._kernel.statmount import mount_namespace_exists
from mountplan.engine.scope import current_scope
from mountplan.engine.state import StateStore

pytestmark = pytest.mark.mountns

MOUNTPLAN = os.path.join(os.path.dirname(sys.executable), "mountplan")

PLAN = """\
version: 1
name: gone
roots:
  r: {}
defaults:
  root: r
  propagation: private
mounts:
  - {name: outer, target: a/b, type: tmpfs, options: {size: 1M}}
  - {name: inner, target: a/b/c/d, type: tmpfs, options: {size: 1M}}
objects:
  - {name: work, path: work, directory: {mode: "0700"}}
  - {name: link, path: work/python, symlink: {target: python3}}
"""


def _listmount_knows_namespaces() -> bool:
    try:
        return mount_namespace_exists(current_scope().mntns_id or 0) is True
    except OSError:
        return False


def _killed_run(tmp_path: Path) -> tuple[str, str]:
    """A root and a state dir after `run --unshare` was SIGKILLed while its command ran."""
    plan = tmp_path / "gone.yaml"
    plan.write_text(PLAN)
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep").write_text("the user's\n")
    state = str(tmp_path / "state")
    out_read, out_write = os.pipe()
    proc = subprocess.Popen(
        [MOUNTPLAN, "run", str(plan), "--root", f"r={root}", "--state-dir", state, "--unshare", "--",
         "/bin/sh", "-c", "echo ready; exec sleep 60"], stdout=out_write, stderr=subprocess.DEVNULL)
    os.close(out_write)
    try:
        assert os.read(out_read, 6) == b"ready\n"
        proc.kill()
        proc.wait(30)
        # Every writer of the pipe, the command last, is gone: so are its namespaces.
        while os.read(out_read, 4096):
            pass
    finally:
        os.close(out_read)
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    # The last process closes its files before it lets go of its namespaces, and the
    # kernel forgets a namespace's id a moment after that: wait for that moment.
    (info,) = StateStore.scan(state)
    scope = StateStore(state, info.key).recorded_scope()
    assert scope is not None and scope.mntns_id is not None
    deadline = time.monotonic() + 10
    while mount_namespace_exists(scope.mntns_id) is not False:
        assert time.monotonic() < deadline, "the killed run's mount namespace did not go away"
        time.sleep(0.02)
    return str(root), state


@pytest.mark.skipif(not _listmount_knows_namespaces(), reason="listmount cannot ask about a mount namespace (6.11+)")
def test_recover_removes_what_a_killed_unshared_run_left(tmp_path: Path) -> None:
    """After the kill the root holds the run's mountpoints and objects; recover removes them and the instance."""
    root, state = _killed_run(tmp_path)
    assert sorted(os.listdir(root)) == ["a", "keep", "work"]  # what the dead run left
    assert os.listdir(state)
    rec = subprocess.run([MOUNTPLAN, "recover", "--state-dir", state], capture_output=True, text=True, timeout=60,
                         check=False)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert sorted(os.listdir(root)) == ["keep"], rec.stdout + rec.stderr
    assert Path(root, "keep").read_text() == "the user's\n"
    assert [name for name in os.listdir(state) if not name.startswith(".")] == []


@pytest.mark.skipif(not _listmount_knows_namespaces(), reason="listmount cannot ask about a mount namespace (6.11+)")
def test_recover_leaves_what_someone_put_in_place_of_a_mountpoint(tmp_path: Path) -> None:
    """A directory replaced after the kill (same name, someone's file inside) is not the run's: left alone."""
    root, state = _killed_run(tmp_path)
    os.rmdir(os.path.join(root, "a", "b"))
    os.mkdir(os.path.join(root, "a", "b"))
    Path(root, "a", "b", "mine").write_text("data\n")
    rec = subprocess.run([MOUNTPLAN, "recover", "--state-dir", state], capture_output=True, text=True, timeout=60,
                         check=False)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert Path(root, "a", "b", "mine").read_text() == "data\n"
    assert not os.path.exists(os.path.join(root, "work"))


def test_recover_leaves_a_live_runs_instance(tmp_path: Path) -> None:
    """A run still going in its own namespace: recover from outside touches none of it."""
    plan = tmp_path / "gone.yaml"
    plan.write_text(PLAN)
    root = tmp_path / "root"
    root.mkdir()
    state = str(tmp_path / "state")
    out_read, out_write = os.pipe()
    proc = subprocess.Popen(
        [MOUNTPLAN, "run", str(plan), "--root", f"r={root}", "--state-dir", state, "--unshare", "--",
         "/bin/sh", "-c", "echo ready; exec sleep 60"], stdout=out_write, stderr=subprocess.DEVNULL)
    os.close(out_write)
    try:
        assert os.read(out_read, 6) == b"ready\n"
        before = sorted(os.listdir(root)), sorted(os.listdir(state))
        rec = subprocess.run([MOUNTPLAN, "recover", "--state-dir", state], capture_output=True, text=True,
                             timeout=60, check=False)
        assert rec.returncode == 0, rec.stdout + rec.stderr
        assert (sorted(os.listdir(root)), sorted(os.listdir(state))) == before
    finally:
        proc.terminate()
        proc.wait(30)
        os.close(out_read)
