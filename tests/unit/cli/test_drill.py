"""`mailrelay drill`: the catalogue names real alerts and runbook sections, a dry run
starts nothing, and bad input is a clear error. (A drill run end to end is
tests/integration/test_drill.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from mailrelay.cli import cli
from mailrelay.cli import drill as module
from tests.runbook_text import ROOT, anchors

ALERTS = ROOT / "monitoring" / "prometheus" / "rules" / "alerts.yml"


def test_every_drill_names_an_alert_and_a_runbook_section_that_exist() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    listed = json.loads(CliRunner().invoke(cli, ["drill", "list", "--json"]).output)
    assert {row["name"] for row in listed} == {"revoked-grant", "throttled"}
    for drill in module.CATALOG:
        assert drill.alert in alerts, drill.name
        page, _, section = drill.runbook.partition("#")
        assert section in anchors(ROOT / page), drill.runbook
        assert (ROOT / "runbooks" / "alerts" / f"{drill.alert}.md").is_file()


def test_a_dry_run_says_what_to_expect_and_starts_nothing(tmp_path: Path) -> None:
    # No stack file at all: a dry run must not need the running system.
    result = CliRunner().invoke(cli, ["drill", "run", "revoked-grant", "--dry-run", "--json",
                                      "--stack", str(tmp_path / "missing.json")])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown == {"drill": "revoked-grant", "dry_run": True,
                     "alert": "MailrelayAccountsNeedReconnect",
                     "runbook": "runbooks/drills.md#revoked-grant"}
    assert "accounts check ADDRESS" in result.stderr


def test_an_unknown_drill_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["drill", "run", "fire-drill"])
    assert result.exit_code == 2
    assert "revoked-grant" in result.output  # the ones that exist


def test_a_stack_without_monitoring_is_refused(tmp_path: Path) -> None:
    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps({"env": {}, "emulator": {"url": "https://x", "bundle": "b"},
                                 "senders": {"microsoft": "a@b.example"}, "serves": {}}))
    result = CliRunner().invoke(cli, ["drill", "run", "revoked-grant", "--stack", str(stack)])
    assert result.exit_code == 2
    assert "demo --monitoring" in result.output


def test_a_missing_stack_file_names_the_demo(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["drill", "run", "throttled", "--stack",
                                      str(tmp_path / "none.json")])
    assert result.exit_code == 66
    assert "mailrelay demo" in result.output
