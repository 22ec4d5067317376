"""The mountplan command under emulated kernels: kernel-free commands work, apply refuses cleanly.

Each command runs as ``python -m mountplan._kernel.seccomp PROFILE -- python -m
mountplan ...`` (what scripts/emulate-kernel does), so the filter is installed in
that subprocess only and inherited by everything it starts.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from mountplan._kernel.emulation import ENV_VAR, PROFILES, Profile, active_profile
from mountplan._kernel.features import REQUIRED, SINCE, has_mount_capability
from mountplan.engine.attrs import required_for
from mountplan.loader import load
from mountplan.testing import mount_table_snapshot

OUTER = active_profile()
REPO = Path(__file__).parents[2]
EMULATE = REPO / "scripts" / "emulate-kernel"
NOBODY = 65534


def mountplan(
    *args: str, profile: str | None = None, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run the CLI (behind ``prefix``, e.g. setpriv), under ``profile``'s filter when one is named."""
    command = [*prefix, sys.executable, "-m", "mountplan", *args]
    if profile is not None:
        command = [sys.executable, "-m", "mountplan._kernel.seccomp", profile, "--", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)


#: plans/demo.yaml has a read-only *recursive* bind, which needs mount_setattr (attributes on
#: every submount); other plans fall back to mount(2) without it (mountplan.engine.attrs).
DEMO_NEEDS = (*REQUIRED, *required_for(load(REPO / "plans" / "demo.yaml")))


def first_refused(denied: dict[str, int]) -> str | None:
    """The syscall applying plans/demo.yaml must refuse on: the first needed one the filters take away."""
    return next((name for name in DEMO_NEEDS if name in denied), None)


def refusal_text(syscall: str, denied: dict[str, int]) -> str:
    """What the refusal must say for ``syscall``: the version for ENOSYS, seccomp for a filter's EPERM."""
    return f"needs Linux {SINCE[syscall]}" if denied[syscall] == errno.ENOSYS else "blocked by seccomp"


def stacked(name: str) -> dict[str, int]:
    """What the run's own filter and ``name``'s filter deny together (the inner errno wins)."""
    return {**(OUTER.denied if OUTER else {}), **PROFILES[name].denied}


#: Profiles under which apply must refuse (decided at collection: a mountns test cannot skip).
REFUSING = [name for name in sorted(PROFILES) if first_refused(stacked(name)) is not None]


@pytest.mark.kernelreach
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_validate_works_under_every_profile(name: str) -> None:
    """validate touches no kernel API: it succeeds under every emulated kernel."""
    result = mountplan("validate", "plans/demo.yaml", profile=name)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.mountns
@pytest.mark.parametrize("name", REFUSING)
def test_apply_refuses_before_any_change_when_a_required_syscall_is_gone(name: str, tmp_path: Path) -> None:
    """Under a profile lacking a required syscall, apply exits 5 naming it and its cause, and changes nothing."""
    denied = stacked(name)
    syscall = first_refused(denied)
    assert syscall is not None
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    state = tmp_path / "state"
    before = mount_table_snapshot()
    result = mountplan(
        "apply", "plans/demo.yaml", "--root", f"sandbox={root}", "--state-dir", str(state), profile=name
    )
    assert result.returncode == 5, result.stderr
    assert syscall in result.stderr and refusal_text(syscall, denied) in result.stderr
    assert "CAP_SYS_ADMIN" not in result.stderr and "Traceback" not in result.stderr
    assert mount_table_snapshot() == before
    assert list(root.iterdir()) == [] and not state.exists()


@pytest.mark.mountns
def test_apply_below_5_2_names_fsopen_and_5_2(tmp_path: Path) -> None:
    """No new mount API at all: `fsopen ... needs Linux 5.2 or newer`, exit 5, no mount, no state."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    state = tmp_path / "state"
    before = mount_table_snapshot()
    result = mountplan(
        "apply", "plans/demo.yaml", "--root", f"sandbox={root}", "--state-dir", str(state), profile="5.1"
    )
    assert result.returncode == 5
    assert "fsopen" in result.stderr and "needs Linux 5.2 or newer" in result.stderr
    assert mount_table_snapshot() == before and list(root.iterdir()) == [] and not state.exists()


@pytest.mark.kernelreach
@pytest.mark.mountns
def test_apply_under_the_active_profile_works_or_refuses_cleanly(
    tmp_path: Path, kernel_profile: str | None, outer_profile: Profile | None
) -> None:
    """Under the run's profile, apply either works (and destroy undoes it) or exits 5 before any change."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    common = ["--root", f"sandbox={root}", "--state-dir", str(tmp_path / "state")]
    before = mount_table_snapshot()
    denied = outer_profile.denied if outer_profile else {}
    syscall = first_refused(denied)
    result = mountplan("apply", "plans/demo.yaml", *common)
    if syscall is not None:
        assert result.returncode == 5, result.stderr
        assert syscall in result.stderr and refusal_text(syscall, denied) in result.stderr
        assert "Traceback" not in result.stderr
        assert mount_table_snapshot() == before and list(root.iterdir()) == []
        return
    assert result.returncode == 0, f"profile {kernel_profile}: {result.stderr}"
    destroyed = mountplan("destroy", "plans/demo.yaml", *common)
    assert destroyed.returncode == 0, f"profile {kernel_profile}: {destroyed.stderr}"


@pytest.mark.parametrize(
    "name", [None, "5.12", "container-eperm"], ids=["no-filter", "5.12", "container-eperm"]
)
def test_unprivileged_without_namespace_says_cap_sys_admin(
    name: str | None, tmp_path: Path, outer_profile: Profile | None
) -> None:
    """Unprivileged and without --unshare on a new kernel: exit 5 saying CAP_SYS_ADMIN, never "needs Linux"."""
    if outer_profile is not None and "fsopen" in outer_profile.denied:
        pytest.skip("the run's own profile takes fsopen away")
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = "/usr/bin/setpriv"
        if not os.access(setpriv, os.X_OK):
            pytest.skip("needs setpriv to drop to an unprivileged user")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        os.chmod(tmp_path, 0o777)
    elif has_mount_capability():
        pytest.skip("this process holds CAP_SYS_ADMIN over its mount namespace")
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, 0o777)
    before = mount_table_snapshot()
    result = mountplan(
        "apply",
        "plans/demo.yaml",
        "--root",
        f"sandbox={root}",
        "--state-dir",
        str(tmp_path / "s"),
        profile=name,
        prefix=prefix,
    )
    if prefix and "mountplan: error" not in result.stderr:
        pytest.skip(f"this Python cannot run as uid {NOBODY}: {result.stderr.strip()[-200:]}")
    assert result.returncode == 5, result.stderr
    assert (
        "fsopen" in result.stderr and "needs CAP_SYS_ADMIN" in result.stderr and "--unshare" in result.stderr
    )
    assert "needs Linux" not in result.stderr
    assert mount_table_snapshot() == before and list(root.iterdir()) == []


def test_emulate_kernel_script_filters_every_descendant_and_exports_the_profile() -> None:
    """scripts/emulate-kernel: the filter reaches a grandchild through fork+exec, and the env var is set."""
    script = (
        "import os, subprocess, sys\n"
        "out = subprocess.run([sys.executable, '-c', 'from mountplan._kernel.features import probe; "
        'f = probe(); print(f.availability("fsopen").value, f.has_unique_mount_ids)\'],'
        " capture_output=True, text=True, check=True).stdout.split()\n"
        f"print(os.environ.get('{ENV_VAR}'), *out)\n"
    )
    result = subprocess.run(
        [str(EMULATE), "5.1", "--", sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5.1", "old-kernel", "False"]


def test_emulate_kernel_script_refuses_unknown_profiles() -> None:
    """An unknown profile name exits 2 listing the known ones; the command does not run."""
    result = subprocess.run([str(EMULATE), "4.19", "--", "true"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "unknown kernel profile '4.19'" in result.stderr and "5.12" in result.stderr
