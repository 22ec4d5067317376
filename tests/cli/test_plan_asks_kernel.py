"""`mountplan plan` asks the kernel about new mounts, changing nothing (issue 12 item 10)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

MOUNTPLAN = os.path.join(os.path.dirname(sys.executable), "mountplan")

PLAN = """\
version: 1
name: asks
roots:
  r: {}
mounts:
  - {name: scratch, target: scratch, type: tmpfs, options: {size: 12Q}}
  - {name: missing, target: missing, bind: {path: /nonexistent-mountplan-source}}
"""


def test_plan_exits_4_naming_what_the_kernel_refuses(tmp_path: Path, root_dir: str) -> None:
    """validate accepts the plan (offline); plan shows the kernel's verdict and exits 4; nothing changes."""
    plan = tmp_path / "asks.yaml"
    plan.write_text(PLAN)
    assert subprocess.run([MOUNTPLAN, "validate", str(plan)], capture_output=True, check=False).returncode == 0
    before = mount_table_snapshot()
    proc = subprocess.run(
        [MOUNTPLAN, "plan", str(plan), "--root", f"r={root_dir}", "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "the kernel refuses scratch (r:scratch)" in proc.stdout and "size" in proc.stdout
    assert "the kernel refuses missing (r:missing)" in proc.stdout
    assert "Apply would fail" in proc.stdout
    assert mount_table_snapshot() == before and os.listdir(root_dir) == []


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MOUNTPLAN, *argv], capture_output=True, text=True, check=False)


def _tree(root: str) -> list[tuple[str, str]]:
    """Every name beneath ``root`` with what it is (a symlink's text), without following anything."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            kind = f"-> {os.readlink(path)}" if os.path.islink(path) else ("dir" if os.path.isdir(path) else "file")
            out.append((os.path.relpath(path, root), kind))
    return sorted(out)


def _symlink_inside(root: str) -> None:
    os.symlink("elsewhere", f"{root}/scratch")  # dangling, and it would stay inside the root


def _symlink_to_dir_inside(root: str) -> None:
    os.mkdir(f"{root}/real")
    os.symlink("real", f"{root}/scratch")


def _symlink_out(root: str) -> None:
    os.symlink("/etc", f"{root}/scratch")


def _parent_symlink(root: str) -> None:
    os.mkdir(f"{root}/real")
    os.symlink("real", f"{root}/a")


def _deep_parent_symlink(root: str) -> None:
    os.makedirs(f"{root}/a/real")
    os.symlink("real", f"{root}/a/l")  # and a/l/m/n below it is missing: the symlink comes first


def _parent_not_a_directory(root: str) -> None:
    with open(f"{root}/a", "w"):
        pass


#: What the root holds, the target planned there, and what apply (and so plan) meets: errno and the path it names.
REFUSED_TARGETS = [
    pytest.param(_symlink_inside, "scratch", "ELOOP", "r:scratch", id="target-symlink-inside-root"),
    pytest.param(_symlink_to_dir_inside, "scratch", "ELOOP", "r:scratch", id="target-symlink-to-dir-inside-root"),
    pytest.param(_symlink_out, "scratch", "ELOOP", "r:scratch", id="target-symlink-out-of-root"),
    pytest.param(_parent_symlink, "a/b", "ELOOP", "r:a", id="parent-symlink"),
    pytest.param(_deep_parent_symlink, "a/l/m/n", "ELOOP", "r:a/l/m", id="symlink-before-missing-parents"),
    pytest.param(_parent_not_a_directory, "a/b", "ENOTDIR", "r:a", id="parent-not-a-directory"),
]


@pytest.mark.parametrize(("make", "target", "errno_name", "shown"), REFUSED_TARGETS)
def test_plan_refuses_the_target_apply_would_refuse(
    tmp_path: Path, root_dir: str, make: object, target: str, errno_name: str, shown: str
) -> None:
    """A target apply cannot reach beneath its root (a symlink anywhere, a parent that is a file) is a
    problem in plan (exit 4, the errno and the path), exactly where apply fails; neither changes anything."""
    assert callable(make)
    make(root_dir)
    plan = tmp_path / "p.yaml"
    plan.write_text(f"version: 1\nname: sym\nroots:\n  r: {{}}\nmounts:\n"
                    f"  - {{name: scratch, target: '{target}', type: tmpfs, options: {{size: 1M}}}}\n")
    args = (str(plan), "--root", f"r={root_dir}", "--state-dir", str(tmp_path / "s"))
    tree, table = _tree(root_dir), mount_table_snapshot()

    planned = _run("plan", *args)
    assert planned.returncode == 4, planned.stdout + planned.stderr
    # The kernel's words as apply reports them: openat2, the path it resolved, [its flags,] the errno.
    said = rf"openat2 '{re.escape(shown)}'( \[[^]]*\])?: {errno_name} "
    assert re.search(rf"the kernel refuses scratch \(r:{re.escape(target)}\): {said}", planned.stdout), planned.stdout
    assert "Apply would fail" in planned.stdout
    assert (_tree(root_dir), mount_table_snapshot()) == (tree, table)

    applied = _run("apply", *args)  # what plan promised: apply fails the same way, and undoes everything
    assert applied.returncode == 4, applied.stdout + applied.stderr
    assert re.search(said, applied.stderr), applied.stderr
    assert (_tree(root_dir), mount_table_snapshot()) == (tree, table)


def test_plan_reports_a_symlinked_bind_source_beneath_its_root(tmp_path: Path, root_dir: str) -> None:
    """A root-relative bind source reached through a symlink is a problem in plan (ELOOP), as in apply."""
    os.makedirs(f"{root_dir}/real/data")
    os.symlink("real", f"{root_dir}/link")
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\nname: sym\nroots:\n  r: {}\nmounts:\n"
                    "  - {name: data, target: data, bind: {root: r, path: link/data}}\n")
    args = (str(plan), "--root", f"r={root_dir}", "--state-dir", str(tmp_path / "s"))
    planned = _run("plan", *args)
    assert planned.returncode == 4, planned.stdout + planned.stderr
    said = r"openat2 'r:link/data'( \[[^]]*\])?: ELOOP "
    assert re.search(rf"the kernel refuses data \(r:data\): bind source r:link/data: {said}", planned.stdout), planned.stdout
    applied = _run("apply", *args)
    assert applied.returncode == 4 and re.search(said, applied.stderr), applied.stderr


def test_plan_passes_what_apply_will_make_or_cover(tmp_path: Path, root_dir: str) -> None:
    """No false alarm: missing parents (apply creates them) and a symlink beneath a new mount's target
    (apply mounts over it first, so it is never resolved) are not problems; apply then succeeds."""
    os.mkdir(f"{root_dir}/tmp")
    os.symlink("/etc", f"{root_dir}/tmp/x")  # hidden by the tmpfs on tmp before tmp/x is resolved
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\nname: fine\nroots:\n  r: {}\nmounts:\n"
                    "  - {name: tmp, target: tmp, type: tmpfs, options: {size: 1M}}\n"
                    "  - {name: x, target: tmp/x, type: tmpfs, options: {size: 1M}}\n"
                    "  - {name: deep, target: new/er/dir, type: tmpfs, options: {size: 1M}}\n")
    args = (str(plan), "--root", f"r={root_dir}", "--state-dir", str(tmp_path / "s"))
    tree = _tree(root_dir)
    planned = _run("plan", *args)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "Plan: 3 to add" in planned.stdout and "refuses" not in planned.stdout
    assert _tree(root_dir) == tree
    applied = _run("apply", *args)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert os.path.ismount(f"{root_dir}/tmp/x") and os.path.ismount(f"{root_dir}/new/er/dir")
