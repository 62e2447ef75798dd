from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from mailrelay.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, sub in group.commands.items():
        if isinstance(sub, click.Group):
            found += _commands(sub, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(cli), ids=lambda p: " ".join(p) or "mailrelay")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_contract_commands_exist() -> None:
    assert {"send", "status", "failed", "replay", "accounts", "worker", "db", "demo",
            "bench"} <= set(cli.commands)
