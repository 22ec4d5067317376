"""The three guarantees against an adversary in the loop (issue 10, items 1-6, 9, 10).

Each test plants the attack on the real kernel inside the sandbox: a symlink, a
rename or a foreign mount injected at the seam between two syscalls, a shared
parent with a peer. Every one of them failed on main 7c7f03d.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _plans import bind, tmpfs
from _profiles import needs_unique_ids

from mountplan import _kernel
from mountplan._kernel import MoveMountFlag
from mountplan.engine import Engine
from mountplan.engine.backend import KernelBackend
from mountplan.errors import BusyError, ExecutionError, KernelError, MountplanError
from mountplan.livetable import read_live_table
from mountplan.model import BindSource, MountSpec, Option, Plan, RootSpec, SourceRef
from mountplan.testing import mount_table_snapshot

pytestmark = pytest.mark.mountns

AT_FDCWD = -100


def _plan(*mounts: MountSpec, name: str = "guard") -> Plan:
    return Plan(name=name, roots=(RootSpec("r"),), mounts=mounts)


def _engine(tmp_path: Path, backend: Any = None) -> Engine:
    return Engine(state_dir=str(tmp_path / "state"), backend=backend)


def _foreign_tmpfs(path: str, source: str = "intruder") -> None:
    """Mount a tmpfs at ``path`` the way a person or a peer tool would (not through mountplan)."""
    fs = _kernel.fsopen("tmpfs")
    try:
        _kernel.fsconfig_set_string(fs.fileno(), "source", source)
        _kernel.fsconfig_create(fs.fileno())
        mnt = _kernel.fsmount(fs.fileno())
    finally:
        fs.close()
    try:
        _kernel.move_mount(mnt.fileno(), "", AT_FDCWD, path, MoveMountFlag.F_EMPTY_PATH)
    finally:
        mnt.close()


def _sources_at(path: str) -> list[str]:
    return [m.source for m in read_live_table().at(path)]


class _Hooked:
    """The real kernel backend, with a callable run just before the first call of one name."""

    def __init__(self, name: str, hook: Callable[..., None]) -> None:
        self._inner = KernelBackend()
        self._name = name
        self._hook: Callable[..., None] | None = hook

    def __getattr__(self, name: str) -> Callable[..., Any]:
        func = getattr(self._inner, name)
        if name != self._name:
            return func  # type: ignore[no-any-return]

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            hook, self._hook = self._hook, None
            if hook is not None:
                hook(*args, **kwargs)
            return func(*args, **kwargs)

        return wrapper


# ---------------------------------------------------------------- 1. overlay layers


def test_relative_legacy_lowerdir_symlink_out_of_the_root_is_refused(tmp_path: Path, root_dir: str) -> None:
    """`lowerdir: l1:l2` with `l1 -> outside` planted: refused, nothing mounted, the secret not exposed.

    On main the legacy string went to the kernel as is, resolved against the cwd
    with symlinks followed: the merged view showed the outside directory.
    """
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    os.symlink(str(outside), f"{root_dir}/l1")
    os.mkdir(f"{root_dir}/l2")
    os.chdir(root_dir)  # where the legacy string would have been resolved from
    before = mount_table_snapshot()
    plan = _plan(MountSpec("ovl", "r", "merged", fs_type="overlay", source="overlay",
                           options=(Option("lowerdir", "l1:l2"),)))
    with pytest.raises(MountplanError) as info:
        _engine(tmp_path).apply(plan, {"r": root_dir})
    assert "l1" in str(info.value)
    assert mount_table_snapshot() == before
    assert not os.path.exists(f"{root_dir}/merged/secret")


def test_relative_legacy_lowerdir_layers_inside_the_root_are_used(tmp_path: Path, root_dir: str) -> None:
    """Legitimate relative legacy layers are pinned beneath the root and merged, whatever the cwd."""
    for layer, name in (("l1", "one"), ("l2", "two")):
        os.mkdir(f"{root_dir}/{layer}")
        Path(f"{root_dir}/{layer}/{name}").write_text(layer)
    os.chdir("/")
    plan = _plan(MountSpec("ovl", "r", "merged", fs_type="overlay", source="overlay",
                           options=(Option("lowerdir", "l1:l2"),)))
    engine = _engine(tmp_path)
    engine.apply(plan, {"r": root_dir})
    assert sorted(os.listdir(f"{root_dir}/merged")) == ["one", "two"]
    engine.destroy(plan, {"r": root_dir})


# ---------------------------------------------------------------- 2. rename race


def test_target_renamed_out_of_the_root_before_attach_is_detached_and_fails(tmp_path: Path, root_dir: str) -> None:
    """The target directory is renamed outside the root between resolution and move_mount.

    On main the mount appeared outside the root and apply reported success.
    """
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.mkdir(f"{root_dir}/a")

    def rename_away(*_: Any, **__: Any) -> None:
        os.rename(f"{root_dir}/a", str(outside / "a"))

    plan = _plan(tmpfs("a", "a"))
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path, _Hooked("move_mount", rename_away)).apply(plan, {"r": root_dir})
    assert "outside" in str(info.value) or "not beneath" in str(info.value)
    assert read_live_table().at(str(outside / "a")) == []
    assert read_live_table().beneath(root_dir) == []


@needs_unique_ids
def test_destroy_finds_a_mount_moved_with_its_directory_by_its_id(tmp_path: Path, root_dir: str) -> None:
    """A parent directory renamed away after apply carries our mount along: destroy still removes it.

    On main destroy said "already gone" and left the mount outside the root.
    """
    os.makedirs(f"{root_dir}/d/a")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    plan = _plan(tmpfs("a", "d/a"))
    engine = _engine(tmp_path)
    engine.apply(plan, {"r": root_dir})
    os.rename(f"{root_dir}/d", str(outside / "d"))
    assert _sources_at(str(outside / "d/a")) == ["a"]  # the kernel carries a mount along with its directory
    result = engine.destroy(plan, {"r": root_dir})
    assert read_live_table().at(str(outside / "d/a")) == []
    assert result.removed == ("a",)


# ---------------------------------------------------------------- 3. check-then-unmount race


def test_foreign_mount_stacked_between_the_id_check_and_the_unmount_is_reported(tmp_path: Path, root_dir: str) -> None:
    """A foreign tmpfs is mounted on ours inside the window: destroy must not claim success.

    On main the foreign mount was unmounted, ours stayed, and destroy reported
    "1 unmounted" with the state dropped.
    """
    plan = _plan(tmpfs("a", "a"))
    _engine(tmp_path).apply(plan, {"r": root_dir})
    point = f"{root_dir}/a"

    def stack_foreign(*_: Any, **__: Any) -> None:
        _foreign_tmpfs(point)

    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path, _Hooked("umount_at", stack_foreign)).destroy(plan, {"r": root_dir})
    assert "foreign" in str(info.value) or "did not make" in str(info.value)
    # Ours is not forgotten: a later destroy finishes it.
    _engine(tmp_path).destroy(plan, {"r": root_dir})
    assert "a" not in _sources_at(point)


# ---------------------------------------------------------------- 4. foreign beneath a recursive bind


def test_foreign_mount_beneath_a_recursive_bind_is_not_detached(tmp_path: Path, root_dir: str) -> None:
    """A hand-made mount inside our recursive bind keeps destroy from detaching the tree.

    On main destroy hit EBUSY, found no holder and detached the whole tree,
    taking the hand-made mount with it.
    """
    host = tmp_path / "host"
    (host / "d").mkdir(parents=True)
    plan = _plan(bind("rb", "rb", SourceRef(str(host)), recursive=True))
    engine = _engine(tmp_path)
    engine.apply(plan, {"r": root_dir})
    _foreign_tmpfs(f"{root_dir}/rb/d", "handmade")
    with pytest.raises(BusyError) as info:
        engine.destroy(plan, {"r": root_dir})
    assert "rb/d" in str(info.value)
    assert _sources_at(f"{root_dir}/rb/d") == ["handmade"]
    subprocess.run(["umount", f"{root_dir}/rb/d"], check=True)
    engine.destroy(plan, {"r": root_dir})
    assert read_live_table().beneath(root_dir) == []


def test_submounts_cloned_by_a_recursive_bind_still_go_with_it(tmp_path: Path, root_dir: str) -> None:
    """Submounts the bind cloned from its source are proven ours and leave with it."""
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    before = mount_table_snapshot()
    _foreign_tmpfs(str(host / "sub"), "hostsub")
    plan = _plan(bind("rb", "rb", SourceRef(str(host)), recursive=True))
    engine = _engine(tmp_path)
    engine.apply(plan, {"r": root_dir})
    assert _sources_at(f"{root_dir}/rb/sub") == ["hostsub"]
    engine.destroy(plan, {"r": root_dir})
    assert read_live_table().beneath(root_dir) == []
    subprocess.run(["umount", str(host / "sub")], check=True)
    assert mount_table_snapshot() == before


# ---------------------------------------------------------------- 5. hidden under a foreign mount


def test_mount_hidden_under_a_foreign_one_is_kept_and_reported(tmp_path: Path, root_dir: str) -> None:
    """destroy with an intruder on top of ours: non-zero, ours kept in state, finished once the cover is gone.

    On main: "0 unmounted, 1 were already gone", success, ours still mounted and
    dropped from the state.
    """
    plan = _plan(tmpfs("a", "a"))
    engine = _engine(tmp_path)
    engine.apply(plan, {"r": root_dir})
    point = f"{root_dir}/a"
    _foreign_tmpfs(point)
    with pytest.raises(ExecutionError) as info:
        engine.destroy(plan, {"r": root_dir})
    assert "intruder" in str(info.value) and "covered" in str(info.value)
    assert _sources_at(point) == ["a", "intruder"]
    subprocess.run(["umount", point], check=True)
    result = engine.destroy(plan, {"r": root_dir})
    assert result.removed == ("a",)
    assert _sources_at(point) == []


# ---------------------------------------------------------------- 6. shared parent


def test_root_on_a_shared_mount_with_a_peer_is_refused(tmp_path: Path) -> None:
    """A root on a shared mount whose peer is elsewhere: refused before anything propagates.

    On main the mount appeared in the peer too and destroy left the copy there.
    """
    shared, peer = tmp_path / "shared", tmp_path / "peer"
    shared.mkdir()
    peer.mkdir()
    _foreign_tmpfs(str(shared), "sharedfs")
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    subprocess.run(["mount", "--bind", str(shared), str(peer)], check=True)
    os.mkdir(shared / "root")
    before = mount_table_snapshot()
    plan = _plan(tmpfs("a", "a"))
    with pytest.raises(MountplanError) as info:
        _engine(tmp_path).apply(plan, {"r": str(shared / "root")})
    assert "shared" in str(info.value) and "peer group" in str(info.value)
    assert mount_table_snapshot() == before
    assert read_live_table().beneath(str(peer)) == read_live_table().at(str(peer))


def test_root_made_private_by_the_plan_keeps_mounts_out_of_the_peer(tmp_path: Path) -> None:
    """`roots: {r: {propagation: private}}`: the root becomes a private bind of itself, undone by destroy."""
    shared, peer = tmp_path / "shared", tmp_path / "peer"
    shared.mkdir()
    peer.mkdir()
    _foreign_tmpfs(str(shared), "sharedfs")
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    subprocess.run(["mount", "--bind", str(shared), str(peer)], check=True)
    os.mkdir(shared / "root")
    before = mount_table_snapshot()
    plan = Plan(name="guard", roots=(RootSpec("r", private=True),), mounts=(tmpfs("a", "a"),))
    engine = _engine(tmp_path)
    engine.apply(plan, {"r": str(shared / "root")})
    assert _sources_at(str(shared / "root/a")) == ["a"]
    assert read_live_table().at(str(peer / "root/a")) == []
    engine.destroy(plan, {"r": str(shared / "root")})
    assert mount_table_snapshot() == before


# ---------------------------------------------------------------- 9. re-entrancy


def test_one_engine_applies_eight_plans_from_eight_threads(tmp_path: Path, root_dir: str) -> None:
    """Concurrent applies of different plans through one Engine each get their own transaction.

    On main the shared transaction slot raised AssertionError.
    """
    engine = _engine(tmp_path)
    roots = []
    for i in range(8):
        os.mkdir(f"{root_dir}/{i}")
        roots.append(f"{root_dir}/{i}")
    plans = [_plan(*(tmpfs(f"m{j}", f"d{j}/m") for j in range(6)), name=f"p{i}") for i in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                engine.apply(plans[i], {"r": roots[i]})
                engine.destroy(plans[i], {"r": roots[i]})
            engine.apply(plans[i], {"r": roots[i]})
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for i in range(8):
        assert len(read_live_table().beneath(roots[i])) == 6
        _, state = engine.load_state(plans[i], {"r": roots[i]})
        assert state is not None and {m.name for m in state.mounts} == {f"m{j}" for j in range(6)}
        engine.destroy(plans[i], {"r": roots[i]})
    assert read_live_table().beneath(root_dir) == []


# ---------------------------------------------------------------- 10. symlinks that stay inside the root


@pytest.mark.parametrize("target", ["link/x", "link"], ids=["intermediate", "last"])
def test_symlink_that_stays_inside_the_root_is_refused(tmp_path: Path, root_dir: str, target: str) -> None:
    """`link -> real` inside the root: a weaker resolver (RESOLVE_BENEATH alone) would follow it."""
    os.makedirs(f"{root_dir}/real/x")
    os.symlink("real", f"{root_dir}/link")
    before = mount_table_snapshot()
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(_plan(tmpfs("t", target)), {"r": root_dir})
    cause = info.value.__cause__
    assert isinstance(cause, KernelError) and cause.errno in {errno.ELOOP, errno.EXDEV}
    assert mount_table_snapshot() == before
    assert os.listdir(f"{root_dir}/real/x") == []


def test_file_bind_onto_a_symlink_target_is_refused(tmp_path: Path, root_dir: str) -> None:
    """A file bind whose target is a symlink (to a file inside the root) is refused, not mounted over the link.

    On main the bind was mounted over the symlink itself.
    """
    Path(f"{root_dir}/real").write_text("")
    os.symlink("real", f"{root_dir}/f")
    before = mount_table_snapshot()
    plan = _plan(MountSpec("null", "r", "f", bind=BindSource(SourceRef("/dev/null"), False)))
    with pytest.raises(ExecutionError) as info:
        _engine(tmp_path).apply(plan, {"r": root_dir})
    cause = info.value.__cause__
    assert isinstance(cause, KernelError) and cause.errno == errno.ELOOP
    assert mount_table_snapshot() == before
    assert os.path.islink(f"{root_dir}/f")
