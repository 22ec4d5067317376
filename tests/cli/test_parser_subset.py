"""The command line builds only the command it runs; that parser is the same one the full command line has."""

from __future__ import annotations

import argparse

import pytest

from mountplan import cli


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_known_commands_are_every_command() -> None:
    """main() builds one command only for a name in _COMMANDS, so the set must list every command."""
    assert set(_choices(cli.build_parser())) == cli._COMMANDS


@pytest.mark.parametrize("command", sorted(cli._COMMANDS))
def test_a_command_built_alone_is_the_same_parser(command: str) -> None:
    """Help text (every option, default and example) of a command built alone equals the full parser's."""
    alone = _choices(cli.build_parser(only=command))
    assert list(alone) == [command]
    assert alone[command].format_help() == _choices(cli.build_parser())[command].format_help()


def test_top_level_help_before_a_command_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`mountplan -h run` is the top-level help: it names every command, not only run."""
    with pytest.raises(SystemExit):
        cli.main(["-h", "run"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("validate", "apply", "destroy", "serve", "watch"))
