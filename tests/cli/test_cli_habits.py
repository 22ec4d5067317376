"""Command-line habits: global options, --help with examples, usage errors for no-op options, completion, man page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mountplan.cli import build_parser, main

REPO = Path(__file__).parents[2]


def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["-c", code] if code is not None else ["-m", "mountplan"]
    return subprocess.run([sys.executable, *prefix, *args], capture_output=True, text=True, cwd=REPO, check=False)


def _commands() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "subcommand"]
    assert sub.choices is not None
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_every_subcommand_help_has_a_description_and_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`mountplan COMMAND --help` explains the command and shows at least one example invocation."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"mountplan {command}" in text.split("examples:")[1]
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 5, description


@pytest.mark.parametrize(
    "argv",
    [["-v", "validate", "plans/demo.yaml"], ["--log-format", "json", "-v", "validate", "plans/demo.yaml"],
     ["validate", "-v", "plans/demo.yaml"], ["-q", "validate", "plans/demo.yaml"]],
    ids=["v-before", "log-format-before", "v-after", "q-before"],
)
def test_logging_options_go_before_or_after_the_command(argv: list[str]) -> None:
    """-v, -q and --log-format are accepted before the command as well as after it."""
    result = run(*argv)
    assert result.returncode == 0, result.stderr
    assert ("valid" in result.stdout) is ("-q" not in argv)


def test_v_before_the_command_turns_on_info_logs(tmp_path: Path) -> None:
    """`mountplan -v` reaches the log configuration (an info event of plan appears on stderr)."""
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\nname: p\nroots: {r: {}}\nmounts:\n  - {name: a, root: r, target: a, type: tmpfs}\n")
    (tmp_path / "root").mkdir()
    quiet = run("plan", str(plan), "--root", f"r={tmp_path / 'root'}", "--state-dir", str(tmp_path / "s"))
    assert quiet.returncode == 0, quiet.stderr
    assert run("-v", "-v", "--log-format", "json", "validate", str(plan)).returncode == 0


@pytest.mark.parametrize(
    "argv",
    [["graph", "plans/demo.yaml", "--format", "mermaid", "--steps"], ["-q", "validate", "-v", "plans/demo.yaml"]],
    ids=["mermaid-steps", "quiet-and-verbose"],
)
def test_an_option_that_would_do_nothing_is_a_usage_error(argv: list[str]) -> None:
    """A combination that cannot mean anything exits 2 with one line on stderr, nothing on stdout."""
    result = run(*argv)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1


def test_a_usage_error_is_printed_once() -> None:
    """An unknown option: the usage line and one error line, nothing else."""
    result = run("validate", "--frobnicate", "plans/demo.yaml")
    assert result.returncode == 2
    assert result.stderr.count("--frobnicate") == 1 and result.stderr.startswith("usage: ")


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["run", "plans/demo.yaml", "/bin/true"], "the command to run goes after --"),
        (["--json", "validate", "plans/demo.yaml"], "--json goes after the command: mountplan validate"),
        (["graph", "plans/demo.yaml", "--json"], "`mountplan graph` has no --json"),
    ],
    ids=["run-without-dashes", "json-before-command", "json-on-graph"],
)
def test_a_misplaced_word_is_told_where_it_belongs(argv: list[str], hint: str) -> None:
    """The usual slips get a usage error (exit 2) that says where the stray word goes, not only that it was unrecognized."""
    result = run(*argv)
    assert result.returncode == 2
    assert hint in result.stderr + result.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_is_generated_from_the_parser(shell: str) -> None:
    """`mountplan completion SHELL` prints a script that knows every subcommand."""
    pytest.importorskip("shtab")
    result = run("completion", shell)
    assert result.returncode == 0, result.stderr
    for command in ("validate", "apply", "graph", "completion"):
        assert command in result.stdout
    assert "--log-format" in result.stdout


def test_manpage_is_generated_from_the_parser() -> None:
    """`mountplan manpage` prints roff naming the commands and options."""
    pytest.importorskip("argparse_manpage")
    result = run("manpage")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(".TH") and "apply" in result.stdout and "timeout" in result.stdout


HIDDEN = "import sys; sys.modules['shtab'] = None; sys.modules['argparse_manpage'] = None\n" \
    "sys.modules['argparse_manpage.manpage'] = None\nfrom mountplan.cli import main; sys.exit(main(sys.argv[1:]))\n"


@pytest.mark.parametrize(("argv", "package"), [(["completion", "bash"], "shtab"), (["manpage"], "argparse-manpage")])
def test_without_the_generator_the_command_says_what_to_install(argv: list[str], package: str) -> None:
    """Without shtab or argparse-manpage: exit 2 and one line naming the package and the extra."""
    result = run(*argv, code=HIDDEN)
    assert result.returncode == 2 and result.stdout == ""
    assert package in result.stderr and "mountplan[docs]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
