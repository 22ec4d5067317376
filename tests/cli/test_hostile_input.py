"""Input that is not a plan: a clear error, the documented exit code, nothing changed, no traceback.

Every case here ended in an internal error (exit 1), a hang, a truncated string
reaching the kernel or raw control characters on the reader's terminal before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mountplan.testing import mount_table_snapshot

REPO = Path(__file__).parents[2]
MOUNTPLAN = [sys.executable, "-m", "mountplan"]
ESC = "\x1b"
#: Clears the screen, retitles the window, rings the bell: what a hostile name would do raw.
HOSTILE = "\x1b[2J\x1b]0;owned\x07"

EXIT_USAGE, EXIT_ROOT, EXIT_STEP, EXIT_STATE = 2, 3, 4, 7


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MOUNTPLAN, *args], capture_output=True, text=True, errors="surrogateescape",
        cwd=REPO, check=False, timeout=timeout,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int) -> None:
    """The documented exit code, one or more clear lines, no traceback, nothing raw."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert ESC not in result.stderr + result.stdout


def write_plan(path: Path, mounts: str, roots: str = "{r: {}}") -> Path:
    path.write_text(f"version: 1\nname: hostile\nroots: {roots}\nmounts:\n{mounts}", encoding="utf-8")
    return path


# ------------------------------------------------------------------ NUL and control characters


NUL_CASES = {
    "option-value": '  - {name: a, target: a, type: tmpfs, options: {size: "1M\\0,uid=0"}}\n',
    "option-name": '  - {name: a, target: a, type: tmpfs, options: {"size\\0": 1M}}\n',
    "source": '  - {name: a, target: a, type: tmpfs, source: "src\\0x"}\n',
    "bind-path": '  - {name: a, target: a, bind: {path: "/usr\\0/../../etc"}}\n',
    "target": '  - {name: a, target: "a\\0b", type: tmpfs}\n',
    "legacy-lowerdir": (
        '  - {name: a, target: a, type: overlay, options: {lowerdir: "/usr\\0:l", upperdir: u, workdir: w}}\n'
    ),
    "lowerdir+": '  - {name: a, target: a, type: overlay, options: {"lowerdir+": ["/usr\\0x"], upperdir: u, workdir: w}}\n',
}


@pytest.mark.parametrize("mounts", NUL_CASES.values(), ids=NUL_CASES.keys())
def test_validate_reports_a_nul_in_any_string_the_kernel_sees(tmp_path: Path, mounts: str) -> None:
    """A NUL (which the kernel would take as the end of the string) is an error at its line: exit 2."""
    plan = write_plan(tmp_path / "p.yaml", mounts)
    result = run("validate", str(plan))
    assert_clean_failure(result, EXIT_USAGE)
    assert f"{plan}:5:" in result.stderr and ": error: " in result.stderr


@pytest.mark.parametrize("text", ["tmp\\e[2J", "tmp\\a", "tmp\\x9b1m", "tmp\\nforged line", "tmp\\tx"])
def test_validate_reports_control_characters_in_a_target(tmp_path: Path, text: str) -> None:
    """Control characters, given as YAML escapes, are refused in targets (as plan-format.md promises)."""
    plan = write_plan(tmp_path / "p.yaml", f'  - {{name: a, target: "{text}", type: tmpfs}}\n')
    assert_clean_failure(run("validate", str(plan)), EXIT_USAGE)


@pytest.mark.mountns
def test_apply_refuses_a_nul_in_an_option_value_and_mounts_nothing(tmp_path: Path) -> None:
    """`size: "1M\\0,uid=0"` is refused (exit 2) instead of mounting a tmpfs with size=1M."""
    plan = write_plan(tmp_path / "p.yaml", NUL_CASES["option-value"])
    root = tmp_path / "root"
    root.mkdir()
    before = mount_table_snapshot()
    result = run("apply", str(plan), "--root", f"r={root}", "--state-dir", str(tmp_path / "s"))
    assert_clean_failure(result, EXIT_USAGE)
    assert mount_table_snapshot() == before
    assert os.listdir(root) == []


@pytest.mark.mountns
def test_apply_refuses_a_nul_in_a_bind_path_and_mounts_nothing(tmp_path: Path) -> None:
    """`bind: {path: "SRC\\0/../../etc"}` is refused (exit 2) instead of binding SRC."""
    source = tmp_path / "src"
    source.mkdir()
    plan = write_plan(tmp_path / "p.yaml", f'  - {{name: a, target: a, bind: {{path: "{source}\\0/../../etc"}}}}\n')
    root = tmp_path / "root"
    root.mkdir()
    before = mount_table_snapshot()
    result = run("apply", str(plan), "--root", f"r={root}", "--state-dir", str(tmp_path / "s"))
    assert_clean_failure(result, EXIT_USAGE)
    assert mount_table_snapshot() == before
    assert os.listdir(root) == []


@pytest.mark.mountns
def test_a_comma_in_an_option_value_reaches_the_kernel_whole(tmp_path: Path) -> None:
    """fsconfig does not split values: `size: "1M,nr_inodes=5"` is one (bad) size, never two options."""
    plan = write_plan(tmp_path / "p.yaml", '  - {name: a, target: a, type: tmpfs, options: {size: "1M,nr_inodes=5"}}\n')
    root = tmp_path / "root"
    root.mkdir()
    before = mount_table_snapshot()
    result = run("apply", str(plan), "--root", f"r={root}", "--state-dir", str(tmp_path / "s"))
    assert_clean_failure(result, EXIT_STEP)
    assert "size" in result.stderr
    assert mount_table_snapshot() == before


# ------------------------------------------------------------------ escaping on output


def test_a_plan_file_name_with_control_characters_is_escaped(tmp_path: Path) -> None:
    """The file name in `FILE:LINE:COL: error:` and in `FILE: valid` is escaped, not sent raw."""
    bad = tmp_path / f"bad{HOSTILE}.yaml"
    bad.write_text("version: 2\n")
    good = tmp_path / f"good{HOSTILE}.yaml"
    good.write_text((REPO / "plans" / "demo.yaml").read_text())
    result = run("validate", str(good), str(bad))
    assert_clean_failure(result, EXIT_USAGE)
    assert "bad\\x1b[2J\\x1b]0;owned\\a.yaml:1:1: error:" in result.stderr
    assert "good\\x1b[2J\\x1b]0;owned\\a.yaml: valid" in result.stdout


def test_argparse_errors_are_escaped() -> None:
    """An unrecognized argument is echoed escaped."""
    result = run("validate", "plans/demo.yaml", f"--x{HOSTILE}")
    assert_clean_failure(result, EXIT_USAGE)
    assert "\\x1b[2J" in result.stderr


@pytest.mark.mountns
def test_a_foreign_mount_source_is_escaped_in_plan_output_and_exact_in_json(tmp_path: Path) -> None:
    """A mount someone else made with a hostile source: `plan` shows it escaped; `--json` keeps it exact."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", f"evil{HOSTILE}", str(root / "a")], check=True)
    plan = write_plan(tmp_path / "p.yaml", "  - {name: a, target: a, type: tmpfs}\n")
    args = ("plan", str(plan), "--root", f"r={root}", "--state-dir", str(tmp_path / "s"))
    text = run(*args)
    assert text.returncode == 0, text.stderr
    assert ESC not in text.stdout and "\x07" not in text.stdout
    assert "evil\\x1b[2J\\x1b]0;owned\\a" in text.stdout
    machine = run(*args, "--json")
    assert machine.returncode == 0, machine.stderr
    assert ESC not in machine.stdout
    assert [f["source"] for f in json.loads(machine.stdout)["foreign"]] == [f"evil{HOSTILE}"]


def _holder(cwd: Path) -> subprocess.Popen[bytes]:
    """A process named with terminal escapes, its cwd and an open file on the mount at ``cwd``."""
    code = (
        "import ctypes, sys, time\n"
        "ctypes.CDLL(None).prctl(15, b'\\x1b[2J\\x1b]0;X\\x07', 0, 0, 0)\n"
        "f = open('f\\x1b[31mred', 'w')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


@pytest.mark.mountns
def test_busy_holder_names_are_escaped(tmp_path: Path) -> None:
    """The EBUSY message names the holder's process and file names, escaped (they are the sandbox's choice)."""
    plan = write_plan(tmp_path / "p.yaml", "  - {name: a, target: a, type: tmpfs}\n")
    root = tmp_path / "root"
    root.mkdir()
    common = (str(plan), "--root", f"r={root}", "--state-dir", str(tmp_path / "s"))
    assert run("apply", *common).returncode == 0
    holder = _holder(root / "a")
    try:
        result = run("destroy", *common)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.returncode == EXIT_STEP, result.stderr
    assert ESC not in result.stderr and "\x07" not in result.stderr
    assert "(\\x1b[2J\\x1b]0;X\\a): " in result.stderr  # pid numbers differ across pid namespaces
    assert "f\\x1b[31mred" in result.stderr
    assert run("destroy", *common).returncode == 0


LOG_SNIPPET = (
    "import logging, sys, structlog\n"
    "from mountplan.cli import logs\n"
    "logs.configure(1, sys.argv[1])\n"
    "structlog.wrap_logger(logging.getLogger('mountplan')).warning('mount.created', target='r:a\\x1b[2J\\nforged')\n"
)


@pytest.mark.parametrize("log_format", ["console", "logfmt"])
def test_log_lines_escape_control_characters(log_format: str) -> None:
    """Console and logfmt log lines show a hostile value escaped, on one line."""
    result = subprocess.run(
        [sys.executable, "-c", LOG_SNIPPET, log_format], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert ESC not in result.stderr
    assert "r:a\\x1b[2J\\nforged" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_json_log_lines_keep_values_exact() -> None:
    """JSON log lines are escaped by JSON itself and decode to the exact value."""
    result = subprocess.run(
        [sys.executable, "-c", LOG_SNIPPET, "json"], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert ESC not in result.stderr
    assert json.loads(result.stderr)["target"] == "r:a\x1b[2J\nforged"


# ------------------------------------------------------------------ bad command lines


@pytest.mark.parametrize(
    "value", ["fd:2147483648", "fd:99999999999999999999", "fd:-1", "fd:abc", "fd:1_0", "fd:", "fd: 3"]
)
def test_a_bad_root_fd_is_a_usage_error(value: str) -> None:
    """`--root r=fd:N` takes a decimal fd number that fits a C int; anything else is exit 2."""
    assert_clean_failure(run("plan", "plans/demo.yaml", "--root", f"sandbox={value}"), EXIT_USAGE)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_a_bad_lock_timeout_is_a_usage_error(value: str) -> None:
    """--lock-timeout is a finite number of seconds, 0 or more."""
    assert_clean_failure(run("plan", "plans/demo.yaml", "--lock-timeout", value), EXIT_USAGE)


def test_root_without_equals_and_unknown_root_name_are_clear_errors(tmp_path: Path) -> None:
    """`--root DIR` is a usage error (2); a root the plan does not have is a root error (3)."""
    assert_clean_failure(run("plan", "plans/demo.yaml", "--root", str(tmp_path)), EXIT_USAGE)
    result = run("plan", "plans/demo.yaml", "--root", f"nosuch={tmp_path}", "--state-dir", str(tmp_path / "s"))
    assert_clean_failure(result, EXIT_ROOT)


def _plan_out(tmp_path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return run(
        "plan", "plans/demo.yaml", "--root", f"sandbox={root}", "--state-dir", str(tmp_path / "s"), "-o", str(out)
    )


def test_plan_out_into_a_directory_fails_before_printing_the_plan(tmp_path: Path) -> None:
    """`plan -o DIR`: exit 2 and nothing on stdout (the plan is not computed first)."""
    result = _plan_out(tmp_path, tmp_path)
    assert_clean_failure(result, EXIT_USAGE)
    assert result.stdout == ""


def test_plan_out_into_a_missing_directory_fails_before_printing_the_plan(tmp_path: Path) -> None:
    """`plan -o missing/FILE`: exit 2, nothing on stdout, nothing created."""
    result = _plan_out(tmp_path, tmp_path / "missing" / "saved.json")
    assert_clean_failure(result, EXIT_USAGE)
    assert result.stdout == ""
    assert not (tmp_path / "missing").exists()


def test_plan_out_never_replaces_a_special_file(tmp_path: Path) -> None:
    """`plan -o FIFO` is refused (exit 2); the FIFO is still a FIFO (a device would be replaced the same way)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = _plan_out(tmp_path, fifo)
    assert_clean_failure(result, EXIT_USAGE)
    assert fifo.is_fifo()


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "graph"])
def test_a_fifo_as_plan_file_is_an_error_not_a_hang(tmp_path: Path, command: str) -> None:
    """A FIFO given as the plan: exit 2 at once (nobody will ever write to it)."""
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    extra = [] if command in ("validate", "graph") else ["--root", f"sandbox={tmp_path}", "--state-dir", str(tmp_path / "s")]
    started = time.monotonic()
    result = run(command, str(fifo), *extra, timeout=30)
    assert_clean_failure(result, EXIT_USAGE)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "content",
    [b"", bytes(range(256)) * 8, b"a: &a [x, x]\n" + b"".join(b"a%d: &a%d [*a, *a]\n" % (i, i) for i in range(20))],
    ids=["empty", "binary", "yaml-bomb"],
)
def test_junk_plan_files_are_invalid_plans(tmp_path: Path, content: bytes) -> None:
    """An empty file, binary junk and an alias bomb: exit 2 with a located error."""
    plan = tmp_path / "p.yaml"
    plan.write_bytes(content)
    result = run("validate", str(plan))
    assert_clean_failure(result, EXIT_USAGE)
    assert f"{plan}:" in result.stderr


def test_a_directory_as_plan_file_is_an_invalid_plan(tmp_path: Path) -> None:
    """A directory given as the plan: exit 2, located at 1:1."""
    result = run("validate", str(tmp_path))
    assert_clean_failure(result, EXIT_USAGE)
    assert f"{tmp_path}:1:1: error:" in result.stderr


# ------------------------------------------------------------------ state directory and saved plans


def _state_dir_cases(tmp_path: Path) -> dict[str, str]:
    a_file = tmp_path / "file"
    a_file.write_text("")
    return {
        "regular-file": str(a_file),
        "device": "/dev/null",
        "procfs": "/proc",
        "3000-components": str(tmp_path) + "/d" * 3000,
    }


@pytest.mark.mountns
@pytest.mark.parametrize(
    "case", ["regular-file", "device", "procfs", "3000-components"]
)
def test_an_unusable_state_dir_is_a_state_error(tmp_path: Path, case: str) -> None:
    """`apply --state-dir X` where X cannot hold state: exit 7, no traceback, nothing mounted."""
    state_dir = _state_dir_cases(tmp_path)[case]
    root = tmp_path / "root"
    root.mkdir()
    before = mount_table_snapshot()
    result = run("apply", "plans/demo.yaml", "--root", f"sandbox={root}", "--state-dir", state_dir)
    assert_clean_failure(result, EXIT_STATE)
    assert mount_table_snapshot() == before
    assert os.listdir(root) == []


@pytest.mark.mountns
@pytest.mark.parametrize("live", [[{"id": "two"}], [["id", 1]], [None], [{"mount_point": 3}]], ids=str)
def test_a_saved_plan_with_malformed_live_entries_is_refused(tmp_path: Path, live: list[object]) -> None:
    """A saved plan edited by hand in `live`: exit 2 ("not a usable saved plan"), nothing mounted."""
    root = tmp_path / "root"
    root.mkdir()
    saved = tmp_path / "saved.json"
    state = str(tmp_path / "s")
    made = run("plan", "plans/demo.yaml", "--root", f"sandbox={root}", "--state-dir", state, "-o", str(saved))
    assert made.returncode == 0, made.stderr
    doc = json.loads(saved.read_text())
    doc["live"] = live
    saved.write_text(json.dumps(doc))
    before = mount_table_snapshot()
    result = run("apply", str(saved), "--state-dir", state)
    assert_clean_failure(result, EXIT_USAGE)
    assert mount_table_snapshot() == before


def test_a_deeply_nested_saved_plan_is_refused(tmp_path: Path) -> None:
    """JSON nested 100,000 deep (json.loads would raise RecursionError): exit 2, no traceback."""
    saved = tmp_path / "saved.json"
    saved.write_text('{"kind": "mountplan/saved-plan", "format_version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = run("apply", str(saved), "--state-dir", str(tmp_path / "s"))
    assert_clean_failure(result, EXIT_USAGE)
