"""Issue 14 item 8: the public API is fully typed, accepts os.PathLike, and docs/api.md is generated."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

import mountplan
from mountplan import api
from mountplan.errors import BusyError, ExecutionError, KernelError

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _gen_api_docs() -> str:
    spec = importlib.util.spec_from_file_location("gen_api_docs", REPO / "scripts" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.render()
    return text


def test_api_reference_is_generated() -> None:
    """docs/api.md is exactly what `python scripts/gen_api_docs.py` prints."""
    committed = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    assert committed == _gen_api_docs(), "regenerate: python scripts/gen_api_docs.py > docs/api.md"


def test_api_reference_covers_every_public_name() -> None:
    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    for name in mountplan.__all__:
        assert f"`mountplan.{name}`" in text, name
    for row in ("| `StalePlanError` |", "| `CompileError` |"):
        assert row in text


def test_cli_error_table_names_every_exit_code_class() -> None:
    table = (REPO / "docs" / "cli.md").read_text(encoding="utf-8").split("## Exit codes", 1)[1]
    for name in ("StalePlanError", "CompileError", "PlanError", "RootError", "LockError", "StateError"):
        assert f"`{name}`" in table, name


def test_execution_error_cause() -> None:
    """``cause`` is ``__cause__`` (raise ... from), or the one given; None without either."""
    kernel = KernelError(16, "move_mount", paths=("/x",))
    with pytest.raises(ExecutionError) as info:
        try:
            raise kernel
        except KernelError as exc:
            raise ExecutionError("apply failed", step="m:attach") from exc
    assert info.value.cause is kernel
    given = OSError(5, "EIO")
    assert ExecutionError("x", cause=given).cause is given
    assert BusyError("busy", holders=("pid 1 (init): cwd",), cause=given).cause is given
    assert ExecutionError("x").cause is None


def test_roots_and_paths_are_converted_at_the_boundary() -> None:
    """Path roots and state dirs reach the engine as str; fds stay ints; None reaches it unchanged."""
    roots = api._roots({"a": pathlib.Path("/srv/a"), "b": "/srv/b", "c": 7})
    assert roots == {"a": "/srv/a", "b": "/srv/b", "c": 7}
    assert all(type(v) in (str, int) for v in roots.values())
    assert api._roots(None) is None
    assert api._dir(pathlib.Path("/run/x")) == "/run/x"


def test_applied_rejects_a_misspelt_option_at_run_time(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TypeError, match="state_dri"), mountplan.applied("nope.yaml", state_dri=str(tmp_path)):  # type: ignore[call-arg]
        pass


SNIPPET_OK = """
    import pathlib
    import mountplan

    plan = mountplan.load(pathlib.Path("plans/build-action.yaml"))
    with mountplan.applied(plan, roots={"r": pathlib.Path("/x"), "fd": 3}, state_dir=pathlib.Path("d")) as result:
        created: tuple[str, ...] = result.created
    mountplan.apply(plan, roots={"r": "/x"}, state_dir="d", lock_timeout=1.0)
    changes = mountplan.plan(plan, {"r": pathlib.Path("/x")})
    drift: bool = changes.has_drift
    try:
        mountplan.destroy(plan, {"r": pathlib.Path("/x")}, lazy=True)
    except mountplan.ExecutionError as exc:
        cause: BaseException | None = exc.cause
"""

SNIPPET_TYPO = """
    import pathlib
    import mountplan

    plan = mountplan.load("plans/build-action.yaml")
    with mountplan.applied(plan, roots={"r": pathlib.Path("/x")}, state_dri="d"):
        pass
"""


def _write(tmp_path: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.skipif(not (BIN / "mypy").exists(), reason="mypy is not installed (the dev extra)")
def test_mypy_strict_accepts_paths_and_rejects_a_misspelt_option(tmp_path: pathlib.Path) -> None:
    ok = _write(tmp_path, "ok.py", SNIPPET_OK)
    typo = _write(tmp_path, "typo.py", SNIPPET_TYPO)
    env = {**os.environ, "MYPY_CACHE_DIR": str(tmp_path / ".mypy_cache")}

    def mypy(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "mypy"), "--strict", "--no-incremental", str(path)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)

    good = mypy(ok)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = mypy(typo)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert 'Unexpected keyword argument "state_dri"' in bad.stdout


PYRIGHT = shutil.which("pyright", path=str(BIN)) or shutil.which("pyright")


def _site_with_mountplan(tmp_path: pathlib.Path) -> pathlib.Path:
    """A venv whose site-packages holds mountplan (pyright cannot follow an editable install's import hook)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "mountplan").symlink_to(REPO / "mountplan")
    return venv


@pytest.mark.skipif(PYRIGHT is None, reason="pyright is not installed (the dev extra)")
def test_pyright_rejects_a_misspelt_option(tmp_path: pathlib.Path) -> None:
    ok = _write(tmp_path, "ok.py", SNIPPET_OK)
    typo = _write(tmp_path, "typo.py", SNIPPET_TYPO)
    venv = _site_with_mountplan(tmp_path)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert PYRIGHT is not None

    def pyright(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
        cmd = [PYRIGHT, "--pythonpath", str(venv / "bin" / "python"), str(path)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, check=False)

    good = pyright(ok)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = pyright(typo)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert '"state_dri"' in bad.stdout


#: Modules whose every public symbol must be fully typed: the API and what its signatures name.
OWNED = ("mountplan.api.", "mountplan.errors.")


@pytest.mark.skipif(PYRIGHT is None, reason="pyright is not installed (the dev extra)")
def test_pyright_verifytypes_finds_nothing_unknown_in_the_api(tmp_path: pathlib.Path) -> None:
    """`pyright --verifytypes`: no public symbol of mountplan is partially unknown (100 % complete)."""
    venv = _site_with_mountplan(tmp_path)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert PYRIGHT is not None
    cmd = [PYRIGHT, "--verifytypes", "mountplan", "--ignoreexternal", "--outputjson"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    report = json.loads(proc.stdout)
    top = {f"mountplan.{name}" for name in mountplan.__all__}
    bad = [
        (symbol["name"], diag["message"])
        for symbol in report["typeCompleteness"]["symbols"]
        for diag in symbol.get("diagnostics", [])
        if diag.get("severity") == "error" and (symbol["name"] in top or symbol["name"].startswith(OWNED))
    ]
    assert bad == []
    # The whole package, not only the API: every public symbol has a known type.
    assert report["typeCompleteness"]["completenessScore"] == 1.0, [
        (s["name"], d["message"]) for s in report["typeCompleteness"]["symbols"] for d in s.get("diagnostics", [])
        if d.get("severity") == "error"
    ][:20]
