"""The state store against a hostile or broken state directory: it refuses, it never follows, hangs or tracebacks.

Issue 10 items 7 and 11: another user's (or a world-writable) state directory,
planted symlinks, FIFOs and directories in place of the lock, journal and state
file, malformed journals, a full or read-only state filesystem, and ``plan -o``
onto something that is not a regular file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mountplan._kernel import AtFlag, MountAttr, mount_setattr
from mountplan.engine.saved import SavedPlan, read_saved_plan
from mountplan.engine.state import ManagedMount, State, StateStore, default_state_dir, write_atomic
from mountplan.errors import PlanError, StateError

KEY = "plan-0123456789ab"
ROOTS: dict[str, Any] = {"r": {"path": "/srv/r", "dev": 1, "ino": 2}}
VICTIM_TEXT = b"the victim's precious data\n"
AS_ROOT = os.geteuid() == 0


def _state() -> State:
    return State("plan", ROOTS, [ManagedMount("a", "r", "/a", 2**31 + 5, True, "f")])


class Blocked(Exception):  # not an OSError on purpose: the code under test may swallow TimeoutError
    """The body blocked (e.g. opening a FIFO) past its deadline."""


@contextlib.contextmanager
def _deadline(seconds: int = 5) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the body blocks, e.g. opening a FIFO."""

    def expired(signum: int, frame: Any) -> None:
        raise Blocked(f"blocked for more than {seconds}s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # and again every second: a cleanup may block too
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM_TEXT)
    return path


def _temp_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if "tmp" in n)


# ---------------------------------------------------------------------- the default directory


def test_default_state_dir_without_xdg_runtime_dir_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user without XDG_RUNTIME_DIR gets an error naming --state-dir, not a /tmp path another user can pre-create."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with pytest.raises(StateError, match="--state-dir"):
        default_state_dir()


def test_default_state_dir_of_a_user_is_under_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$XDG_RUNTIME_DIR/mountplan`` for a user; ``/run/mountplan`` for root."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_state_dir() == "/run/user/1000/mountplan"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == "/run/mountplan"


@pytest.mark.skipif(AS_ROOT, reason="needs an unprivileged caller (root's run is covered by the /run tests below)")
def test_root_of_a_user_namespace_gets_a_state_error_not_a_traceback(tmp_path: Path) -> None:
    """``unshare -Urm`` makes euid 0, so /run/mountplan is chosen; it cannot be made or is not ours: StateError."""
    code = (
        "from mountplan.engine.state import StateStore, default_state_dir\n"
        "from mountplan.errors import StateError\n"
        "d = default_state_dir(); assert d == '/run/mountplan', d\n"
        "try:\n"
        "    with StateStore(d, 'k').locked(1.0): print('LOCKED')\n"
        "except StateError as exc: print('STATEERROR', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(["unshare", "-Urm", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path), check=False)
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"no user namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("STATEERROR"), proc.stdout + proc.stderr
    assert "/run/mountplan" in proc.stdout and "--state-dir" in proc.stdout


@pytest.mark.mountns
def test_run_mountplan_that_cannot_be_created_is_a_state_error() -> None:
    """euid 0 without the power to write /run (here: /run read-only in the sandbox): StateError naming --state-dir."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "run", "/run"], check=True)
    store = StateStore(default_state_dir(), KEY)
    with pytest.raises(StateError, match=r"/run/mountplan: Read-only file system.*--state-dir"), store.locked(1.0):
        pass


@pytest.mark.mountns
@pytest.mark.rootonly
def test_run_mountplan_pre_created_by_another_user_is_refused() -> None:
    """A /run/mountplan that uid 65534 made first (mode 0777, or 0700 and theirs) is never used by root."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "run", "/run"], check=True)
    os.mkdir("/run/mountplan")
    for owner, mode in [(0, 0o777), (65534, 0o700)]:
        os.chown("/run/mountplan", owner, owner)
        os.chmod("/run/mountplan", mode)
        with pytest.raises(StateError, match=rf"/run/mountplan is owned by uid {owner} with mode {mode:04o}"):
            StateStore(default_state_dir(), KEY).save(_state())
        assert os.listdir("/run/mountplan") == []


# ---------------------------------------------------------------------- trusting the directory


def test_state_dir_is_created_0700_and_only_its_last_component(tmp_path: Path) -> None:
    """A missing state dir is made 0700; a missing parent is an error, not a tree of new directories."""
    made = tmp_path / "new"
    with StateStore(str(made), KEY).locked(1.0):
        pass
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    with pytest.raises(StateError, match="parent"):
        StateStore(str(tmp_path / "missing" / "state"), KEY).save(_state())
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777], ids=["0777", "0770", "0702", "sticky-1777"])
def test_state_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Anyone who can write the directory can plant a journal: refused, naming path, owner and mode."""
    path = tmp_path / "open"
    path.mkdir()
    path.chmod(mode)
    refused = pytest.raises(StateError, match=rf"{path}.* owned by uid {os.geteuid()} with mode {mode:04o}")
    with refused, StateStore(str(path), KEY).locked(1.0):
        pass
    assert os.listdir(path) == []


@pytest.mark.skipif(not AS_ROOT, reason="making a directory owned by another user needs root")
def test_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A /run/mountplan pre-created by uid 65534 (mode 0700) is not root's: refused, nothing written."""
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(StateError, match="owned by uid 65534"):
        StateStore(str(path), KEY).save(_state())
    assert os.listdir(path) == []


def test_state_dir_that_is_a_symlink_is_refused(tmp_path: Path, state_dir: str) -> None:
    """The last component must be the directory itself, not a link another user could swap."""
    link = tmp_path / "link"
    link.symlink_to(state_dir)
    with pytest.raises(StateError, match="symlink"):
        StateStore(str(link), KEY).save(_state())
    assert os.listdir(state_dir) == []


@pytest.mark.parametrize("where", ["file", "device-dir", "long"])
def test_unusable_state_dir_paths_are_state_errors(tmp_path: Path, where: str) -> None:
    """A file, /dev or a 3,000-component path as --state-dir: a StateError, never an OSError."""
    path = {"file": str(tmp_path / "f"), "device-dir": "/dev/null", "long": str(tmp_path) + "/a" * 3000}[where]
    if where == "file":
        Path(path).write_text("x")
    with pytest.raises(StateError):
        StateStore(path, KEY).save(_state())


# ---------------------------------------------------------------------- planted files

_PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "symlink": lambda p, victim: p.symlink_to(victim),
    "directory": lambda p, victim: p.mkdir(),
    "fifo": lambda p, victim: os.mkfifo(p),
}


def _use(store: StateStore, which: str) -> None:
    if which == "lock":
        with store.locked(1.0):
            pass
    elif which == "journal":
        try:
            store.journal_read()
        finally:
            store.journal_open({"roots": ROOTS})
    else:
        try:
            store.load()
        finally:
            store.save(_state())


@pytest.mark.parametrize("kind", sorted(_PLANTS))
@pytest.mark.parametrize("which", ["lock", "journal", "state"])
def test_planted_non_regular_file_is_refused(state_dir: str, victim: Path, which: str, kind: str) -> None:
    """A symlink (to a victim's file), directory or FIFO in place of a state file: StateError at once, victim intact."""
    store = StateStore(state_dir, KEY)
    planted = Path({"lock": store.lock_path, "journal": store.journal_path, "state": store.state_path}[which])
    _PLANTS[kind](planted, victim)
    with _deadline(), pytest.raises(StateError, match=r"not a regular file|refusing"):
        _use(store, which)
    store.journal_close(remove=False)
    assert victim.read_bytes() == VICTIM_TEXT
    assert planted.is_symlink() if kind == "symlink" else planted.exists()


@pytest.mark.skipif(not AS_ROOT, reason="making a file owned by another user needs root")
def test_lock_owned_by_another_user_is_refused(state_dir: str) -> None:
    """A lock file someone else owns (so could rewrite) is not ours to flock."""
    store = StateStore(state_dir, KEY)
    Path(store.lock_path).write_text("")
    os.chown(store.lock_path, 65534, 65534)
    with pytest.raises(StateError, match="owned by uid 65534"), store.locked(1.0):
        pass


def test_predictable_state_temp_name_planted_as_symlink_is_not_followed(state_dir: str, victim: Path) -> None:
    """The old temp name ``X.state.json.tmp.PID`` planted as a link to a victim: the save does not write through it."""
    store = StateStore(state_dir, KEY)
    Path(f"{store.state_path}.tmp.{os.getpid()}").symlink_to(victim)
    store.save(_state())
    assert victim.read_bytes() == VICTIM_TEXT
    assert store.load() == _state()


# ---------------------------------------------------------------------- write_atomic (state and plan -o)


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "chardev"])
def test_write_atomic_never_replaces_a_non_regular_file(tmp_path: Path, victim: Path, kind: str) -> None:
    """``plan -o /dev/full`` must not swap the device for a JSON file: refused, the node stays, no temp file."""
    target = tmp_path / "target"
    if kind == "chardev":
        if not AS_ROOT:
            pytest.skip("mknod of a device needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # a private /dev/full
    else:
        _PLANTS[kind](target, victim)
    before = os.lstat(target).st_mode
    with _deadline(), pytest.raises(StateError, match=rf"refusing to replace {target}"):
        write_atomic(str(target), b"{}\n", 0o644)
    assert os.lstat(target).st_mode == before
    assert victim.read_bytes() == VICTIM_TEXT
    assert _temp_files(str(tmp_path)) == []


def test_write_atomic_into_a_missing_directory_is_a_state_error(tmp_path: Path) -> None:
    """``plan -o missing/FILE``: a StateError naming the path and errno, not an OSError."""
    with pytest.raises(StateError, match=r"missing/plan.json: No such file or directory \(ENOENT\)"):
        write_atomic(str(tmp_path / "missing" / "plan.json"), b"{}", 0o644)


def _fill(path: str) -> None:
    """Fill the filesystem at ``path`` until the kernel says ENOSPC."""
    with open(os.path.join(path, "filler"), "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


@pytest.mark.mountns
def test_save_on_a_full_state_filesystem_is_a_state_error_without_leftovers(tmp_path: Path) -> None:
    """ENOSPC while saving: StateError with op, path and errno; the old state stays; no temp file is left."""
    fs = str(tmp_path / "fs")
    os.mkdir(fs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "small", fs], check=True)
    store = StateStore(fs, KEY)
    store.save(_state())
    _fill(fs)
    big = State("plan", ROOTS, [ManagedMount(f"m{i}", "r", f"/m{i}" * 40, 2**31 + i, True, "f") for i in range(200)])
    with pytest.raises(StateError, match=rf"{store.state_path}: No space left on device \(ENOSPC\)"):
        store.save(big)
    assert store.load() == _state()
    assert _temp_files(fs) == []


@pytest.mark.mountns
def test_journal_write_on_a_full_state_filesystem_leaves_no_partial_line(tmp_path: Path) -> None:
    """ENOSPC mid-line: StateError, and the half-written line is cut off, so the journal stays well formed."""
    fs = str(tmp_path / "fs")
    os.mkdir(fs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "small", fs], check=True)
    store = StateStore(fs, KEY)
    store.journal_open({"plan": "plan", "roots": ROOTS})
    _fill(fs)
    with pytest.raises(StateError, match=r"append to journal .*ENOSPC"):
        for i in range(64):  # the first line that needs a new page fails, possibly after a short write
            store.journal_write({"op": "mkdir", "mount": "a", "root": "r", "path": f"/{i}" + "x" * 3000})
    store.journal_close(remove=False)
    contents = store.journal_load()
    assert contents.malformed == () and not contents.torn
    assert [e["seq"] for e in contents.entries] == list(range(1, len(contents.entries) + 1))


@pytest.mark.mountns
def test_read_only_state_filesystem_is_a_state_error(tmp_path: Path) -> None:
    """EROFS on save, journal and removal: StateError naming the operation, never a bare OSError."""
    fs = str(tmp_path / "fs")
    os.mkdir(fs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "small", fs], check=True)
    store = StateStore(fs, KEY)
    store.save(_state())
    # A read-only mount attribute (mount(8)'s remount,ro is refused in a user namespace).
    mount_setattr(-100, fs, AtFlag(0), MountAttr.RDONLY)
    actions: list[tuple[Callable[[], None], str]] = [
        (lambda: store.save(_state()), "create a temporary file"),
        (lambda: store.journal_open({"roots": ROOTS}), "open"),
        (lambda: store.save(State("plan", ROOTS)), "remove"),
    ]
    for action, op in actions:
        with pytest.raises(StateError, match=rf"cannot {op} .*Read-only file system \(EROFS\)"):
            action()
    assert store.load() == _state()


# ---------------------------------------------------------------------- malformed content


def test_malformed_journal_lines_are_reported_and_not_returned(state_dir: str) -> None:
    """A bad line (``"seq": "two"``, missing keys, wrong types, deep nesting) is listed, not handed to recovery."""
    store = StateStore(state_dir, KEY)
    store.journal_open({"plan": "plan", "roots": ROOTS})
    store.journal_write({"op": "mkdir", "mount": "a", "root": "r", "path": "/a"})
    store.journal_close(remove=False)
    bad = [
        '{"seq":"two","op":"mkdir","root":"r","path":"/b"}',
        '{"seq":3,"op":"mount","root":"r","path":"/c"}',
        '{"seq":4,"op":"mount","root":"r","path":"/c","mnt_id":"5"}',
        '{"seq":5,"op":"created","ref":2,"dev":"1","ino":2}',
        '{"seq":6,"op":"update","root":"r","path":"/a","mnt_id":5,"restore":{"attrs":1}}',
        "[1, 2]",
        '{"seq":7,"op":' + "[" * 100_000 + "]" * 100_000 + "}",
        "not json at all",
    ]
    with open(store.journal_path, "a") as f:
        f.write("\n".join(bad) + '\n{"seq":8,"op":"undone","ref":2}\n{"seq":9,"op":"mkd')
    contents = store.journal_load()
    assert [e["seq"] for e in contents.entries] == [1, 2, 8]
    assert [m.line for m in contents.malformed] == list(range(3, 3 + len(bad)))
    assert contents.torn
    assert all(type(e["seq"]) is int for e in store.journal_read())


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"format":2,"scope":' + "[" * 100_000 + "]" * 100_000 + "}",
        "[]",
        '{"plan":"p"}',
        "\xff\xfe",
    ],
    ids=["not-json", "deeply-nested", "not-an-object", "no-format", "not-utf8"],
)
def test_malformed_state_file_is_a_state_error(state_dir: str, text: str) -> None:
    """Whatever the state file holds, load() answers with a StateError, never a traceback."""
    store = StateStore(state_dir, KEY)
    Path(store.state_path).write_bytes(text.encode("latin-1"))
    with pytest.raises(StateError, match=store.state_path):
        store.load()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(mounts={"a": 1}),
        lambda d: d["mounts"][0].update(mnt_id="two"),
        lambda d: d["mounts"][0].update(created="x"),
        lambda d: d["mounts"].append([1]),
        lambda d: d.update(roots=[1]),
    ],
    ids=["mounts-object", "mnt-id-string", "created-string", "mount-a-list", "roots-list"],
)
def test_wrong_types_in_state_file_are_a_state_error(state_dir: str, mutate: Callable[[dict[str, Any]], None]) -> None:
    """A state file with the right format but wrong field types is inconsistent, reported as such."""
    store = StateStore(state_dir, KEY)
    store.save(_state())
    data = json.loads(Path(store.state_path).read_text())
    mutate(data)
    Path(store.state_path).write_text(json.dumps(data))
    with pytest.raises(StateError, match="inconsistent"):
        store.load()


# ---------------------------------------------------------------------- saved plans


def _saved(live: list[Any]) -> dict[str, Any]:
    plan = SavedPlan("p", "p.yaml", "name: p\n", {"r": {"path": "/r", "dev": 1, "ino": 2}}, False, "empty", (), {})
    return {**plan.to_json(), "live": live}


def test_saved_plan_path_that_is_a_fifo_is_not_read(tmp_path: Path) -> None:
    """``apply FIFO``: the saved-plan sniffing neither hangs nor consumes it (the loader reports what it is)."""
    fifo = tmp_path / "plan"
    os.mkfifo(fifo)
    with _deadline():
        assert read_saved_plan(str(fifo)) is None


@pytest.mark.parametrize("live", [[1], [{"id": "7"}], [{"id": 7, "mount_point": "/a"}]], ids=["number", "id-string", "missing"])
def test_saved_plan_with_malformed_live_entry_is_a_plan_error(tmp_path: Path, live: list[Any]) -> None:
    """A saved plan's ``live`` entries are checked on reading, not discovered broken by check_live later."""
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(_saved(live)))
    with pytest.raises(PlanError, match="not a usable saved plan"):
        read_saved_plan(str(path))


def test_deeply_nested_saved_plan_is_a_plan_error(tmp_path: Path) -> None:
    """JSON nested deeper than the parser's recursion limit is a PlanError, not a RecursionError."""
    path = tmp_path / "saved.json"
    path.write_text('{"kind":' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PlanError, match="nested too deeply"):
        read_saved_plan(str(path))


def test_saved_plan_round_trips(tmp_path: Path) -> None:
    """A well-formed saved plan still reads back as written (the checks accept what _record writes)."""
    record = {"id": 7, "mount_point": "/a", "fs_type": "tmpfs", "source": "t", "options": "", "attrs": 0,
              "propagation": "private"}
    path = tmp_path / "saved.json"
    plan = SavedPlan.from_json(_saved([record]), filename="x")
    plan.write(str(path))
    again = read_saved_plan(str(path))
    assert again == plan
    assert _temp_files(str(tmp_path)) == []
