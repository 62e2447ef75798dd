"""docker/ is kept correct by parsing: no Docker engine runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from mailrelay.cli import cli as main

ROOT = Path(__file__).resolve().parents[2]


def _services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    return dict(compose["services"])


def _mailrelay_services() -> dict[str, list[str]]:
    """Services running the mailrelay image (its entry point is `mailrelay`), by command."""
    return {name: service["command"] for name, service in _services().items()
            if service.get("image") == "mailrelay:latest"}


def test_exactly_one_beat_runs() -> None:
    beats = [name for name, command in _mailrelay_services().items() if command[:1] == ["beat"]]
    assert beats == ["beat"]
    assert _services()["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_every_mailrelay_service_runs_a_real_command() -> None:
    assert isinstance(main, click.Group)
    for name, command in _mailrelay_services().items():
        ctx = click.Context(main)
        found = main.get_command(ctx, command[0])
        assert found is not None, f"{name}: no `mailrelay {command[0]}`"
        if isinstance(found, click.Group):
            assert found.get_command(ctx, command[1]) is not None, f"{name}: {command}"


def test_every_worker_profile_named_in_compose_exists() -> None:
    import workers

    for name, command in _mailrelay_services().items():
        if command[0] == "worker":
            assert command[command.index("--profile") + 1] in workers.names(), name
