"""The Ansible module mountplan.mountplan.plan under real ansible-core, against localhost in a private namespace.

Every test that mounts runs ansible-playbook (``connection: local``) inside the
suite's sandbox, so the module's mounts land in a throwaway mount namespace and
the host's table never changes; unprivileged, the sandbox is a user namespace
in which the module runs as its root.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _ansible import BIN, REPO, mounts_beneath, needs_ansible, plan_task, run_playbook

pytestmark = needs_ansible

PLAN_V1 = """\
version: 1
name: fleet
roots: {r: {}}
mounts:
  - {name: scratch, root: r, target: scratch, type: tmpfs, options: {size: 8M}}
  - {name: cache, root: r, target: scratch/cache, type: tmpfs}
"""
# v2: scratch grows (an update in place), cache goes, logs comes.
PLAN_V2 = """\
version: 1
name: fleet
roots: {r: {}}
mounts:
  - {name: scratch, root: r, target: scratch, type: tmpfs, options: {size: 16M}}
  - {name: logs, root: r, target: logs, type: tmpfs}
"""
# v1 without cache: a mount the plan no longer lists.
PLAN_V1_NO_CACHE = PLAN_V1.split("  - {name: cache")[0]
MOUNTED_V1 = [("scratch", "tmpfs"), ("scratch/cache", "tmpfs")]


def _params(tmp_path: Path, root: str, content: str = PLAN_V1, **extra: object) -> dict[str, Any]:
    return {"content": content, "roots": {"r": root}, "state_dir": str(tmp_path / "state"), **extra}


@pytest.mark.mountns
def test_apply_reports_changed_and_a_second_apply_unchanged(tmp_path: Path, root_dir: str) -> None:
    """state=present mounts the plan (changed=true); the same plan again, or in check mode, is changed=false."""
    params = _params(tmp_path, root_dir)
    tasks = [plan_task("first", params), plan_task("second", params), plan_task("checked", params, check_mode=True)]
    run = run_playbook(tmp_path, tasks)
    assert run.returncode == 0, run.stdout + run.stderr
    first, second, checked = run.results["first"], run.results["second"], run.results["checked"]
    assert first["changed"] is True and first["created"] == ["scratch", "cache"]
    assert second["changed"] is False
    assert second["unchanged"] == ["scratch", "cache"] and second["created"] == []
    assert checked["changed"] is False
    assert "changed=1 " in run.stdout  # the play recap counts one changed task
    assert "WARNING" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert mounts_beneath(root_dir) == MOUNTED_V1


@pytest.mark.mountns
def test_check_mode_reports_changes_and_mounts_nothing(tmp_path: Path, root_dir: str) -> None:
    """--check runs `mountplan plan`: changed=true with the change set, and no mount, no directory made."""
    run = run_playbook(tmp_path, [plan_task("checked", _params(tmp_path, root_dir))], "--check")
    assert run.returncode == 0, run.stdout + run.stderr
    checked = run.results["checked"]
    assert checked["changed"] is True
    assert [(c["mount"], c["action"]) for c in checked["changes"]] == [("scratch", "create"), ("cache", "create")]
    assert "created" not in checked  # nothing was applied
    assert mounts_beneath(root_dir) == []
    assert os.listdir(root_dir) == []


@pytest.mark.mountns
def test_diff_mode_shows_the_live_and_the_planned_mounts(tmp_path: Path, root_dir: str) -> None:
    """Check and diff mode: before is the live table's values, after the plan's; Ansible prints them as a diff."""
    v2 = _params(tmp_path, root_dir, content=PLAN_V2, prune=True)
    tasks = [plan_task("v1", _params(tmp_path, root_dir)), plan_task("v2", v2, check_mode=True, diff=True)]
    run = run_playbook(tmp_path, tasks)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "diff" not in run.results["v1"]  # diff mode was off for that task
    diff = run.results["v2"]["diff"]
    # tmpfs reads size back in KiB; the planned value is shown the same way.
    assert diff["before"] == "scratch  (r:scratch)\n    options.size: size=8192k\ncache  (r:scratch/cache)\n"
    assert diff["after"] == "scratch  (r:scratch)\n    options.size: size=16384k\nlogs  (r:logs)\n"
    # Ansible prints it as a unified diff: the one docs/ansible.md shows.
    documented = re.search(r"```diff\n(.*?)```", (REPO / "docs" / "ansible.md").read_text(), flags=re.DOTALL)
    assert documented is not None
    assert documented.group(1) in run.stdout, run.stdout
    assert mounts_beneath(root_dir) == MOUNTED_V1  # check mode: the diff was only shown


@pytest.mark.mountns
def test_prune_removes_what_the_plan_no_longer_lists(tmp_path: Path, root_dir: str) -> None:
    """Without prune a dropped mount is kept (and reported); with prune it is removed and changed=true."""
    tasks = [
        plan_task("v1", _params(tmp_path, root_dir)),
        # In diff mode the module plans, shows, then applies that saved plan: the kept mount is in the result.
        plan_task("kept", _params(tmp_path, root_dir, content=PLAN_V1_NO_CACHE), diff=True),
        plan_task("pruned", _params(tmp_path, root_dir, content=PLAN_V1_NO_CACHE, prune=True)),
    ]
    run = run_playbook(tmp_path, tasks)
    assert run.returncode == 0, run.stdout + run.stderr
    kept, pruned = run.results["kept"], run.results["pruned"]
    assert kept["changed"] is False and [k["mount"] for k in kept["kept"]] == ["cache"]
    assert pruned["changed"] is True and pruned["pruned"] == ["cache"]
    assert mounts_beneath(root_dir) == [("scratch", "tmpfs")]


@pytest.mark.mountns
def test_state_absent_destroys_and_a_second_destroy_is_unchanged(tmp_path: Path, root_dir: str) -> None:
    """state=absent unmounts what the plan made (changed=true); again, there is nothing left (changed=false)."""
    params = _params(tmp_path, root_dir)
    tasks = [
        plan_task("applied", params),
        plan_task("checked", {**params, "state": "absent"}, check_mode=True),
        plan_task("destroyed", {**params, "state": "absent"}),
        plan_task("again", {**params, "state": "absent"}),
    ]
    run = run_playbook(tmp_path, tasks)
    assert run.returncode == 0, run.stdout + run.stderr
    checked, destroyed, again = run.results["checked"], run.results["destroyed"], run.results["again"]
    assert checked["changed"] is True and "removed" not in checked
    assert destroyed["changed"] is True and sorted(destroyed["removed"]) == ["cache", "scratch"]
    assert again["changed"] is False and again["removed"] == []
    assert mounts_beneath(root_dir) == []


@pytest.mark.mountns
def test_a_busy_mount_fails_the_destroy_unless_lazy(tmp_path: Path, root_dir: str) -> None:
    """A process inside a mount makes state=absent fail with mountplan's BusyError; lazy=true detaches it."""
    params = _params(tmp_path, root_dir)
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN_V1)
    applied = subprocess.run(  # the command line is quicker than a playbook for the setup
        [str(BIN / "mountplan"), "apply", str(plan), "--root", f"r={root_dir}", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    holder = subprocess.Popen(["sleep", "300"], cwd=os.path.join(root_dir, "scratch", "cache"))
    try:
        tasks = [
            plan_task("busy", {**params, "state": "absent"}, ignore_errors=True),
            plan_task("lazy", {**params, "state": "absent", "lazy": True}),
        ]
        run = run_playbook(tmp_path, tasks)
        assert run.returncode == 0, run.stdout + run.stderr
        busy, lazy = run.results["busy"], run.results["lazy"]
        assert busy["failed"] is True and busy["error"] == "BusyError" and busy["rc"] == 4
        assert "sleep" in busy["msg"]  # mountplan names the process that holds the mount
        assert lazy["changed"] is True
        assert sorted(lazy["removed"]) == ["cache", "scratch"]  # so the failed destroy had left both
        assert mounts_beneath(root_dir) == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


INVALID_PLAN = "version: 1\nname: x\nroots: {r: {}}\nmounts:\n  - {name: a, root: r, target: /abs, type: tmpfs}\n"
BAD_SIZE_PLAN = (
    "version: 1\nname: x\nroots: {r: {}}\nmounts:\n  - {name: a, root: r, target: a, type: tmpfs, options: {size: bogus}}\n"
)
FAILURES = [
    # (task, plan text, root, check mode, the command that failed, its exit code, error kind, part of its message)
    ("invalid_plan", INVALID_PLAN, None, False, "apply", 2, "PlanError", "content:5:32: error: target '/abs' must be relative"),
    ("missing_root", PLAN_V1, "/nonexistent/mountplan-root", False, "apply", 3, "RootError", "/nonexistent/mountplan-root"),
    # apply fails at the step the kernel refuses, and rolls back.
    ("kernel_refuses", BAD_SIZE_PLAN, None, False, "apply", 4, "ExecutionError", "fsconfig 'size=bogus'"),
    # plan asks the kernel without mounting, and exits 4 with the problems.
    ("kernel_refuses_check", BAD_SIZE_PLAN, None, True, "plan", 4, "KernelError", "fsconfig 'size=bogus'"),
]


@pytest.mark.mountns
def test_mountplan_failures_are_ansible_failures_with_its_message(tmp_path: Path, root_dir: str) -> None:
    """Each failure fails its task with mountplan's message and exit code; without ignore_errors it ends the play."""
    tasks = [
        plan_task(case, _params(tmp_path, root or root_dir, content=text), ignore_errors=True, check_mode=check)
        for case, text, root, check, *_ in FAILURES
    ]
    fatal = _params(tmp_path, root_dir, content="version: 1\nname: [\n")
    tasks += [plan_task("fatal", fatal), plan_task("never", _params(tmp_path, root_dir))]
    run = run_playbook(tmp_path, tasks)
    for case, _, _, _, command, code, kind, message in FAILURES:
        result = run.results[case]
        assert result["failed"] is True, case
        assert (result["rc"], result["error"]) == (code, kind), case
        assert result["msg"].startswith(f"mountplan {command} failed with exit {code} ({kind})"), result["msg"]
        assert message in result["msg"], result["msg"]
    assert run.returncode == 2  # ansible-playbook: a host failed
    assert "fatal: [localhost]: FAILED!" in run.stdout
    assert run.results["fatal"]["msg"].startswith("mountplan apply failed with exit 2 (PlanError)")
    assert "never" not in run.results  # the play stopped at the failure
    assert "Traceback" not in run.stdout + run.stderr
    assert mounts_beneath(root_dir) == [] and os.listdir(root_dir) == []


@pytest.mark.mountns
def test_the_module_needs_only_the_command_not_an_importable_mountplan(tmp_path: Path, root_dir: str) -> None:
    """The module runs under a Python that cannot import mountplan: it drives the `mountplan` command."""
    bare = tmp_path / "bare-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    probe = subprocess.run([python, "-c", "import mountplan"], capture_output=True, check=False, cwd=tmp_path)
    assert probe.returncode != 0  # the premise: this interpreter really cannot import it
    run = run_playbook(tmp_path, [plan_task("applied", _params(tmp_path, root_dir))], interpreter=python)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.results["applied"]["changed"] is True
    assert mounts_beneath(root_dir) == MOUNTED_V1
