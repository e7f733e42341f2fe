"""Every command's --help ends with examples: lines that start with `tether <command>` and parse as that command's
own arguments (an option renamed or removed fails here, not in a user's terminal)."""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterator

import click
from click.testing import CliRunner

from tether.cli.examples import EXAMPLES
from tether.cli.main import COMMANDS, cli


def every_command() -> Iterator[tuple[str, click.Command]]:
    """Each command's path (``tether machines forget``) and the command, subcommands of groups included."""

    def walk(path: str, command: click.Command) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(f"{path} {name}", sub)

    for name, (module, attr) in sorted(COMMANDS.items()):
        yield from walk(f"tether {name}", getattr(importlib.import_module(f"tether.cli.{module}"), attr))


def help_of(path: str) -> str:
    result = CliRunner().invoke(cli, [*path.split()[1:], "--help"], prog_name="tether", obj={})
    assert result.exit_code == 0, result.output
    return result.output


def example_lines(help_text: str) -> list[str]:
    """The lines of the Examples: block, as a user would paste them (comments left out)."""
    block = re.split(r"\n *Examples:\n", help_text, maxsplit=1)
    assert len(block) == 2, help_text
    lines = [line.strip() for line in block[1].splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_every_command_help_shows_an_example_of_itself() -> None:
    paths = ["tether", *(path for path, _ in every_command())]
    for path in paths:
        lines = example_lines(help_of(path))
        assert lines and all(line.startswith("tether ") for line in lines), (path, lines)
        if path != "tether":
            assert any(line == path or line.startswith(path + " ") for line in lines), (path, lines)
    assert sorted(EXAMPLES) == sorted(paths)  # no examples for a command that is gone


def resolve(words: list[str]) -> tuple[str, click.Command, list[str]]:
    """The command ``tether WORDS`` names and the words left for it."""
    command: click.Command = cli
    path = "tether"
    while isinstance(command, click.Group) and words and words[0] in command.list_commands(click.Context(command)):
        found = command.get_command(click.Context(command), words[0])
        assert found is not None
        path, command, words = f"{path} {words[0]}", found, words[1:]
    return path, command, words


def test_every_example_parses_as_its_command_s_arguments() -> None:
    parsed = 0
    for path, examples in EXAMPLES.items():
        for line, what in examples:
            assert what and not what.endswith("."), (line, what)  # a short phrase under a `#`
            words = shlex.split(line)
            assert words[0] == "tether"
            named, command, rest = resolve(words[1:])
            if path != "tether":
                assert named == path, (line, path)
            # Parsing checks every option exists, takes what is given and every required argument is there.
            command.make_context(named, list(rest), obj={})
            parsed += 1
    assert parsed >= len(EXAMPLES)


def test_a_wrong_example_would_fail_to_parse() -> None:
    _, command, rest = resolve(["run", "example", "--lcoal"])
    try:
        command.make_context("tether run", rest)
    except click.UsageError:
        return
    raise AssertionError("an unknown option parsed")
