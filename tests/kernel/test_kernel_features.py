"""The feature probe under real seccomp filters: old kernel, container filter and missing capability told apart.

Each filter is installed in a forked child (a filter cannot be removed), which
probes and reports back. Expectations follow the kernel's rules: a filter runs
before the syscall, so its errno wins; fsopen, fsmount, fspick and move_mount
check CAP_SYS_ADMIN over the mount namespace before looking at any argument.
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from mountplan._kernel import seccomp
from mountplan._kernel.emulation import ENV_VAR, PROFILES, Profile
from mountplan._kernel.features import REQUIRED, SINCE, Availability, Features, has_mount_capability, probe
from mountplan._kernel.namespaces import CloneFlag, unshare
from mountplan.errors import FeatureMissingError

Forked = Callable[[Callable[[], Any]], Any]

CAPABILITY_CHECKED = ("fsopen", "fsmount", "fspick", "move_mount")
NOBODY = 65534
ALL_EPERM = Profile(
    "all-eperm", "every mount-API syscall answers EPERM", dict.fromkeys(SINCE, errno.EPERM), True
)
FSOPEN_EPERM = Profile("fsopen-eperm", "only fsopen answers EPERM", {"fsopen": errno.EPERM}, True)


def expected_causes(denied: dict[str, int], capable: bool) -> dict[str, Availability]:
    """What the kernel's rules predict for each syscall under a filter denying ``denied``."""
    family_blocked = denied.get("fsconfig") == errno.EPERM
    out: dict[str, Availability] = {}
    for name in SINCE:
        err = denied.get(name)
        if err == errno.ENOSYS:
            out[name] = Availability.OLD_KERNEL
        elif name in CAPABILITY_CHECKED and not capable:
            out[name] = (
                Availability.NO_CAPABILITY_AND_SECCOMP if family_blocked else Availability.NO_CAPABILITY
            )
        elif err == errno.EPERM:
            out[name] = Availability.SECCOMP
        else:
            out[name] = Availability.PRESENT
    return out


def causes(features: Features) -> dict[str, Availability]:
    return {name: features.availability(name) for name in SINCE}


def stacked(outer: Profile | None, inner: Profile | None) -> dict[str, int]:
    """Filters stack; for a syscall both deny, the most recently installed one's errno wins."""
    return {**(outer.denied if outer else {}), **(inner.denied if inner else {})}


def drop_to_nobody() -> None:
    """In a forked child: become uid/gid 65534 with no capabilities (root only)."""
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def skip_if_outer_denies(outer: Profile | None, *names: str) -> None:
    """Skip a test about ``names`` when the run's own emulated profile already takes one away."""
    taken = sorted(set(names) & set(outer.denied if outer else {}))
    if taken:
        pytest.skip(f"the emulated profile of this run takes {', '.join(taken)} away")


def unprivileged_or_skip() -> Callable[[], None]:
    """How a child loses CAP_SYS_ADMIN: drop to nobody as root, nothing when already without it."""
    if os.geteuid() == 0:
        return drop_to_nobody
    if has_mount_capability():
        pytest.skip("this process holds CAP_SYS_ADMIN over its mount namespace and is not root")
    return lambda: None


@pytest.mark.kernelreach
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_profile_reports_exactly_its_causes(
    name: str, outer_profile: Profile | None, forked: Forked
) -> None:
    """Under each emulated profile, detect() reports ENOSYS as an old kernel and EPERM as seccomp, nothing else."""
    profile = PROFILES[name]

    def child() -> dict[str, Availability]:
        seccomp.install(profile)
        return causes(probe())

    assert forked(child) == expected_causes(stacked(outer_profile, profile), has_mount_capability())


@pytest.mark.kernelreach
def test_active_profile_is_what_the_probe_sees(outer_profile: Profile | None) -> None:
    """The probe in this very process reports the profile the run is under (or the bare kernel)."""
    assert causes(probe()) == expected_causes(stacked(outer_profile, None), has_mount_capability())


@pytest.mark.parametrize(
    "name", [None, "5.12", "container-eperm"], ids=["no-filter", "5.12", "container-eperm"]
)
def test_unprivileged_eperm_is_a_missing_capability(
    name: str | None, outer_profile: Profile | None, forked: Forked
) -> None:
    """Without CAP_SYS_ADMIN and without a namespace, fsopen & co. need the capability: never "old kernel"."""
    skip_if_outer_denies(outer_profile, *CAPABILITY_CHECKED, "fsconfig")
    lose_capability = unprivileged_or_skip()

    def child() -> tuple[dict[str, Availability], str, str]:
        if name is not None:
            seccomp.install(PROFILES[name])
        lose_capability()
        features = probe()
        with pytest.raises(FeatureMissingError) as info:
            features.require()
        return causes(features), str(info.value), info.value.cause

    got, message, cause = forked(child)
    for syscall in CAPABILITY_CHECKED:
        assert got[syscall] is Availability.NO_CAPABILITY
    assert cause == "capability"
    assert "fsopen" in message and "CAP_SYS_ADMIN" in message and "--unshare" in message
    assert "needs Linux" not in message and "seccomp" not in message
    if name == "container-eperm":
        assert got["mount_setattr"] is Availability.SECCOMP


def test_capability_bit_without_owning_the_mount_namespace_is_not_seccomp(
    outer_profile: Profile | None, forked: Forked
) -> None:
    """A new user namespace alone gives CapEff bit 21 but not CAP_SYS_ADMIN over the old mount namespace.

    Under a filter, a guard reading only CapEff would blame seccomp for fsopen's EPERM.
    """
    skip_if_outer_denies(outer_profile, *CAPABILITY_CHECKED, "fsconfig")

    def child() -> tuple[bool, dict[str, Availability]]:
        seccomp.install(PROFILES["5.12"])
        unshare(CloneFlag.NEWUSER)
        with open("/proc/self/status") as f:
            cap_eff = next(line for line in f if line.startswith("CapEff:")).split()[1]
        return bool(int(cap_eff, 16) >> 21 & 1), causes(probe())

    has_bit, got = forked(child)
    assert has_bit
    for syscall in CAPABILITY_CHECKED:
        assert got[syscall] is Availability.NO_CAPABILITY


def test_inside_own_user_and_mount_namespace_eperm_is_the_filter(
    outer_profile: Profile | None, forked: Forked
) -> None:
    """In a new user+mount namespace (unshare -Urm) we hold the capability, so fsopen's EPERM is seccomp's."""

    def child() -> tuple[dict[str, Availability], dict[str, Availability]]:
        unshare(CloneFlag.NEWUSER | CloneFlag.NEWNS)
        bare = causes(probe())
        seccomp.install(ALL_EPERM)
        return bare, causes(probe())

    bare, filtered = forked(child)
    assert bare == expected_causes(stacked(outer_profile, None), capable=True)
    assert filtered == dict.fromkeys(SINCE, Availability.SECCOMP)


def test_without_capability_under_a_filter_blocking_the_family_both_are_named(forked: Forked) -> None:
    """No capability and a filter that blocks fsconfig too: the message names CAP_SYS_ADMIN and seccomp."""
    lose_capability = unprivileged_or_skip()

    def child() -> tuple[dict[str, Availability], str]:
        seccomp.install(ALL_EPERM)
        lose_capability()
        features = probe()
        with pytest.raises(FeatureMissingError) as info:
            features.require()
        return causes(features), str(info.value)

    got, message = forked(child)
    assert got == expected_causes(ALL_EPERM.denied, capable=False)
    assert got["fsopen"] is Availability.NO_CAPABILITY_AND_SECCOMP
    assert "CAP_SYS_ADMIN" in message and "seccomp" in message


def test_without_capability_under_a_filter_that_allows_the_family_the_capability_is_named(
    outer_profile: Profile | None, forked: Forked
) -> None:
    """A filter that blocks only fsopen, no capability: fsconfig works, so the EPERM reported is the capability's."""
    skip_if_outer_denies(outer_profile, "fsconfig")
    lose_capability = unprivileged_or_skip()

    def child() -> Availability:
        seccomp.install(FSOPEN_EPERM)
        lose_capability()
        return probe().availability("fsopen")

    assert forked(child) is Availability.NO_CAPABILITY


@pytest.mark.rootonly
def test_with_capability_eperm_from_a_capability_checked_probe_is_seccomp(forked: Forked) -> None:
    """As root, fsopen answering EPERM can only be the filter."""
    if os.geteuid() != 0 or not has_mount_capability():
        pytest.skip("needs root")

    def child() -> Availability:
        seccomp.install(FSOPEN_EPERM)
        return probe().availability("fsopen")

    assert forked(child) is Availability.SECCOMP


def test_fspick_is_required(outer_profile: Profile | None, forked: Forked) -> None:
    """With only fspick gone, require() refuses naming fspick (apply reconfigures with it)."""
    skip_if_outer_denies(outer_profile, *REQUIRED[: REQUIRED.index("fspick")])
    if not has_mount_capability():
        pytest.skip("without CAP_SYS_ADMIN, fsopen is refused first")
    assert "fspick" in REQUIRED
    only_fspick = Profile("no-fspick", "fspick answers ENOSYS", {"fspick": errno.ENOSYS}, True)

    def child() -> tuple[str, str]:
        seccomp.install(only_fspick)
        with pytest.raises(FeatureMissingError) as info:
            probe().require()
        return info.value.syscall, str(info.value)

    syscall, message = forked(child)
    assert syscall == "fspick" and "needs Linux 5.2 or newer" in message


def test_a_filter_for_another_architecture_denies_nothing(
    outer_profile: Profile | None, forked: Forked
) -> None:
    """Calls whose seccomp_data.arch differs from the filter's pass untouched (the arch check's jump lands on ALLOW)."""
    native, _ = seccomp._arch()
    foreign = next(arch for arch, _ in seccomp._ARCHES.values() if arch != native)

    def child() -> dict[str, Availability]:
        seccomp.load_filter(seccomp.build_filter(PROFILES["5.1"].denied, foreign))
        return causes(probe())

    assert forked(child) == expected_causes(stacked(outer_profile, None), has_mount_capability())


# ----------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("cause", "err", "must", "must_not"),
    [
        (
            Availability.OLD_KERNEL,
            errno.ENOSYS,
            ["fsopen", "ENOSYS", "needs Linux 5.2 or newer"],
            ["CAP_SYS_ADMIN"],
        ),
        (Availability.SECCOMP, errno.EPERM, ["fsopen", "EPERM", "blocked by seccomp"], ["CAP_SYS_ADMIN"]),
        (
            Availability.NO_CAPABILITY,
            errno.EPERM,
            ["fsopen", "EPERM", "needs CAP_SYS_ADMIN", "run as root or with --unshare"],
            ["needs Linux", "seccomp"],
        ),
        (
            Availability.NO_CAPABILITY_AND_SECCOMP,
            errno.EPERM,
            ["CAP_SYS_ADMIN", "--unshare", "seccomp"],
            ["needs Linux"],
        ),
        (
            Availability.EPERM_UNEXPLAINED,
            errno.EPERM,
            ["fsopen", "EPERM"],
            ["needs Linux", "needs CAP_SYS_ADMIN"],
        ),
    ],
    ids=lambda v: v.value if isinstance(v, Availability) else None,
)
def test_require_message_names_syscall_cause_and_fix(
    cause: Availability, err: int, must: list[str], must_not: list[str]
) -> None:
    """Each cause has its own message and errno; the error survives pickling (the sandbox relays it)."""
    features = Features(present=frozenset(SINCE) - {"fsopen"}, causes={"fsopen": cause})
    with pytest.raises(FeatureMissingError) as info:
        features.require()
    exc = info.value
    assert (exc.syscall, exc.since, exc.errno, exc.cause, exc.exit_code) == (
        "fsopen",
        "5.2",
        err,
        cause.value,
        5,
    )
    for text in must:
        assert text in str(exc)
    for text in must_not:
        assert text not in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert (type(again), str(again), again.cause) == (FeatureMissingError, str(exc), exc.cause)


def test_require_names_the_first_missing_in_required_order() -> None:
    """require() with no names checks REQUIRED in order; with names, only those."""
    features = Features(present=frozenset({"fsconfig", "fsmount", "open_tree", "move_mount"}))
    with pytest.raises(FeatureMissingError) as info:
        features.require()
    assert info.value.syscall == "fsopen"
    features.require("fsconfig", "fsmount")
    assert features.missing() == ("fsopen", "fspick", "openat2")
    assert features.missing("mount_setattr") == ("mount_setattr",)


def test_feature_missing_error_keeps_its_old_constructor() -> None:
    """FeatureMissingError(syscall, since[, err]) still means an old kernel."""
    exc = FeatureMissingError("mount_setattr", "5.12")
    assert exc.errno == errno.ENOSYS and exc.cause == "old-kernel"
    assert "mount_setattr needs Linux 5.12 or newer" in str(exc)


# ------------------------------------------------------------- statx seam

_STATX_SCRIPT = """
import json
from mountplan._kernel import AtFlag, statx_mount_ids
from mountplan._kernel.features import detect
ids = statx_mount_ids(-100, "/", AtFlag(0))
with open("/proc/self/mountinfo") as f:
    old = [int(line.split()[0]) for line in f if line.split()[4] == "/"][-1]
print(json.dumps([ids.mnt_id, ids.unique, detect().has_unique_mount_ids, old]))
"""


@pytest.mark.parametrize("name", ["", *sorted(PROFILES)])
def test_statx_seam_hides_unique_ids_below_6_8(name: str) -> None:
    """A pre-6.8 profile in MOUNTPLAN_KERNEL_PROFILE gives the 32-bit mountinfo id and unique=False, like such a kernel."""
    import json

    env = {**os.environ, ENV_VAR: name}
    out = subprocess.run(
        [sys.executable, "-c", _STATX_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    mnt_id, unique, has_unique, mountinfo_id = json.loads(out.stdout)
    hides = bool(name) and not PROFILES[name].has_unique_mount_ids
    if hides:
        assert (mnt_id, unique, has_unique) == (mountinfo_id, False, False)
    else:
        if not unique:
            pytest.skip("this kernel has no STATX_MNT_ID_UNIQUE (before 6.8)")
        assert has_unique and mnt_id != mountinfo_id


def test_unknown_profile_in_the_environment_is_refused() -> None:
    """A typo in MOUNTPLAN_KERNEL_PROFILE fails loudly instead of silently testing the real kernel."""
    env = {**os.environ, ENV_VAR: "5.0"}
    out = subprocess.run(
        [sys.executable, "-c", "import mountplan"], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode != 0 and "unknown kernel profile '5.0'" in out.stderr
