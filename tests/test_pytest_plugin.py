"""mountplan's pytest plugin, as a user's project sees it: entry point, markers, fixtures, host guard."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from mountplan.testing import read_mount_records

pytest_plugins = ["pytester"]

USER_TESTS = '''
import os

import pytest

import mountplan

PLAN = """
version: 1
name: user-plan
roots: {input: {}}
mounts:
  - {name: tmp, target: tmp, type: tmpfs, options: {size: 1M}}
"""


@pytest.mark.mountns
def test_applies_my_plan(mountplan_root, tmp_path):
    assert os.stat("/proc/self/ns/mnt").st_ino != int(os.environ["HOST_MNT_NS"])
    assert os.getpid() == 1
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    plan = mountplan.load(str(path))
    with mountplan.applied(plan, roots={"input": mountplan_root}, state_dir=str(tmp_path / "state")):
        assert os.path.ismount(os.path.join(mountplan_root, "tmp"))
    # Left mounted on purpose: the namespace must take it away.
    mountplan.apply(plan, roots={"input": mountplan_root}, state_dir=str(tmp_path / "state"))


def test_unmarked_runs_in_place():
    assert os.stat("/proc/self/ns/mnt").st_ino == int(os.environ["HOST_MNT_NS"])


def test_sandbox_fixture(mountplan_sandbox):
    assert mountplan_sandbox(lambda: os.stat("/proc/self/ns/mnt").st_ino) != int(os.environ["HOST_MNT_NS"])


@pytest.mark.mountns
def test_failure_comes_back():
    assert 1 == 2, "inside"
'''


def test_plugin_is_registered_under_the_pytest11_entry_point() -> None:
    """The installed distribution names mountplan.pytest_plugin as its pytest11 plugin."""
    points = importlib.metadata.distribution("mountplan").entry_points
    assert [(p.name, p.value) for p in points if p.group == "pytest11"] == [
        ("mountplan", "mountplan.pytest_plugin")
    ]


def test_a_users_marked_test_runs_in_a_new_mount_namespace_and_leaves_the_host_alone(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's mountns test runs as pid 1 of a new mount namespace; its mounts never reach the host."""
    monkeypatch.setenv("HOST_MNT_NS", str(os.stat("/proc/self/ns/mnt").st_ino))
    pytester.makepyfile(test_user=USER_TESTS)
    before = read_mount_records()
    result = pytester.runpytest_subprocess(
        "--strict-markers", "-p", "no:cacheprovider", "--mountplan-host-guard"
    )
    assert read_mount_records() == before
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_failure_comes_back*", "*AssertionError: inside*"])
    result.stdout.no_fnmatch_line("*HOST MOUNT TABLE CHANGED*")


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    """mountns and cgroupns pass --strict-markers in a project that declares neither."""
    result = pytester.runpytest_subprocess("--markers", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["@pytest.mark.mountns:*", "@pytest.mark.cgroupns:*"])


GUARD_CONFTEST = """
import mountplan.testing as testing

_real = testing.read_mount_records
_calls = []


def _drifting():
    # The third read (after the second test) sees a mount the host did not have.
    _calls.append(1)
    records = _real()
    if len(_calls) >= 3:
        records = sorted([*records, testing.MountRecord("/leaked", "/", "tmpfs", "tmpfs", ("rw",), ("rw",), ())])
    return records


testing.read_mount_records = _drifting
"""


def test_host_guard_fails_the_session_and_names_the_test_after_which_the_table_changed(
    pytester: pytest.Pytester,
) -> None:
    """With --mountplan-host-guard, a mount left on the host fails the run and the report names its test."""
    pytester.makeconftest(GUARD_CONFTEST)
    pytester.makepyfile(test_a="def test_first():\n    pass\n\n\ndef test_second():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--mountplan-host-guard")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*HOST MOUNT TABLE CHANGED*",
            "+ /leaked / tmpfs tmpfs rw rw private",
            "after test_a.py::test_second:",
        ]
    )


def test_host_guard_is_off_unless_asked_for(pytester: pytest.Pytester) -> None:
    """Without the option the plugin does not read the host table: projects opt in."""
    pytester.makeconftest(GUARD_CONFTEST)
    pytester.makepyfile(test_a="def test_first():\n    pass\n\n\ndef test_second():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
