"""The README (and the runbooks) say what the CLI does: checked against click's own
definitions, so a new command needs only its row, and a renamed option fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import workers
from mailrelay import config
from mailrelay.cli import cli
from mailrelay.cli.exits import MEANINGS

ROOT = Path(__file__).parents[3]
README = (ROOT / "README.md").read_text()
DOCS = {path.relative_to(ROOT): path.read_text()
        for path in [ROOT / "README.md", ROOT / "docker" / "README.md",
                     *sorted((ROOT / "runbooks").glob("*.md"))]}
# Commands that run until stopped and print no data: no --json.
PROCESSES = {("worker",), ("beat",), ("flower",), ("demo",)}
OPTION = re.compile(r"--[a-z][a-z0-9-]*")


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*prefix, name))


def options_of(command: click.Command) -> set[str]:
    """Every --option of ``command`` and, for a group, of everything under it."""
    found = {opt for param in command.params for opt in param.opts + param.secondary_opts
             if opt.startswith("--")} | {"--help"}
    if isinstance(command, click.Group):
        for _, sub in walk(command):
            found |= options_of(sub)
    return found


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def table_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with ``header``."""
    lines = text[text.index(header):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        # "\|" inside a cell is a pipe of the cell's text, not a column.
        cells = [cell.strip().replace("\x00", "|")
                 for cell in line.replace("\\|", "\x00").strip("|").split("|")]
        rows.append(cells)
    return rows


COMMAND_ROWS = table_rows(section("Command line"), "| command | what it does |")


def _row_words(row: list[str]) -> list[str]:
    return row[0].strip("`").split()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_a_row_in_the_command_table(name: str) -> None:
    rows = [row for row in COMMAND_ROWS if _row_words(row)[0] == name]
    assert len(rows) == 1, f"`{name}` needs one row in the README's command table"
    command = cli.commands[name]
    if isinstance(command, click.Group):
        listed = set(_row_words(rows[0])[1].split("/")) if len(_row_words(rows[0])) > 1 else set()
        assert listed == set(command.commands), f"list every subcommand: {sorted(command.commands)}"


def test_the_command_table_names_only_commands_that_exist() -> None:
    assert [row[0] for row in COMMAND_ROWS if _row_words(row)[0] not in cli.commands] == []


@pytest.mark.parametrize("row", COMMAND_ROWS, ids=lambda row: _row_words(row)[0])
def test_options_in_the_command_table_exist(row: list[str]) -> None:
    command = cli.commands[_row_words(row)[0]]
    named = set(OPTION.findall(" ".join(row)))
    assert named - options_of(command) == set()


def _invocations() -> Iterator[tuple[str, str]]:
    """(document, text) of every `mailrelay ...` in code: inline spans and code blocks,
    with shell line continuations joined and comments dropped."""
    for path, text in DOCS.items():
        joined = re.sub(r"\\\n\s*", " ", text)
        spans = re.findall(r"`([^`\n]+)`", joined)
        blocks = [line for block in re.findall(r"```[a-z]*\n(.*?)```", joined, re.S)
                  for line in block.splitlines()]
        for snippet in spans + blocks:
            for found in re.finditer(r"(?<![\w./-])mailrelay ([^#|]*)", snippet.split(" # ")[0]):
                first = found[1].split()[0] if found[1].split() else ""
                if first in cli.commands or first.startswith("--"):  # not a directory's name
                    yield str(path), found[1].strip()


INVOCATIONS = sorted(set(_invocations()))


def _resolve(words: list[str]) -> tuple[tuple[str, ...], click.Command]:
    command: click.Command = cli
    path: tuple[str, ...] = ()
    for word in words:
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
            path = (*path, word)
        elif not word.startswith("-"):
            break
    return path, command


@pytest.mark.parametrize(("document", "invocation"), INVOCATIONS,
                         ids=[f"{d}: {i[:40]}" for d, i in INVOCATIONS])
def test_every_documented_invocation_uses_options_the_command_has(document: str,
                                                                  invocation: str) -> None:
    words = invocation.split()
    path, command = _resolve(words)
    if not path:  # `mailrelay --help`, `mailrelay --debug COMMAND ...`
        path, command = _resolve([w for w in words if w != "--debug"])
    known = options_of(command) | {"--debug", "--version"}
    named = {m for word in words for m in OPTION.findall(word.split("=")[0])[:1]
             if word.startswith("--")}
    assert named - known == set(), f"{document}: mailrelay {invocation}"


def test_the_documents_show_invocations() -> None:
    assert len(INVOCATIONS) > 40  # the scan found them (a broken regex would find none)


def test_the_exit_code_table_is_the_cli_s() -> None:
    rows = table_rows(section("Command line"), "| code | meaning |")
    assert {int(code): meaning for code, meaning in rows} == MEANINGS


def test_the_settings_table_is_the_settings_module_s() -> None:
    rows = {row[0].strip("`"): row for row in
            table_rows(section("Settings"), "| variable | default | meaning |")}
    assert set(rows) == {setting.env for setting in config.TABLE}
    for setting in config.TABLE:
        if isinstance(setting.default, str) and setting.default:
            assert f"`{setting.default}`" in rows[setting.env][1], setting.env


def test_the_worker_profiles_table_and_worker_help_give_every_profile_and_why() -> None:
    rows = {row[0]: row for row in
            table_rows(section("Command line"), "| profile | queues | pool | why |")}
    assert set(rows) == set(workers.names())
    help_text = " ".join(CliRunner().invoke(cli, ["worker", "--help"]).output.split())
    for name in workers.names():
        profile = workers.load(name)
        assert rows[name][2] == f"{profile.pool} ×{profile.concurrency}", name
        assert rows[name][3] == profile.why, name
        assert f"{name} {profile.pool} x{profile.concurrency}: {profile.why}" in help_text


@pytest.mark.parametrize("path", [p for p, c in walk(cli)
                                  if not isinstance(c, click.Group) and p not in PROCESSES],
                         ids=" ".join)
def test_every_data_command_takes_json(path: tuple[str, ...]) -> None:
    _, command = _resolve(list(path))
    assert "--json" in options_of(command)


@pytest.mark.parametrize("path", [p for p, c in walk(cli) if not isinstance(c, click.Group)],
                         ids=" ".join)
def test_every_option_has_help(path: tuple[str, ...]) -> None:
    _, command = _resolve(list(path))
    bare = [param.name for param in command.params
            if isinstance(param, click.Option) and not param.hidden and not param.help]
    assert bare == []


@pytest.mark.parametrize("command", ["worker", "beat", "flower"])
def test_the_long_running_commands_take_the_same_logging_option(command: str) -> None:
    option = next(p for p in cli.commands[command].params if "--loglevel" in p.opts)
    assert isinstance(option.type, click.Choice)
    assert list(option.type.choices) == ["debug", "info", "warning", "error"]
