"""runbooks/ cannot drift: a page per alert and per operation, each with the same five
parts, an index that lists them all, links and anchors that resolve, commands that name
real `mailrelay` commands and options, and PromQL a real Prometheus accepts. (Running the
commands against a live system is tests/integration/test_runbook_commands.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from mailrelay.cli import cli
from tests.prometheus import Prometheus
from tests.runbook_text import (
    PLACEHOLDERS,
    ROOT,
    RUNBOOKS,
    Command,
    all_commands,
    anchors,
    links,
    pages,
    refused_promql,
    statements,
)

ALERTS = ROOT / "monitoring" / "prometheus" / "rules" / "alerts.yml"
PARTS = ("Means", "Confirm", "Mitigate", "Verify", "Escalate")
# The operations on-call must be able to look up, and their pages.
OPERATIONS = {
    "replay failed sends": "replay.md",
    "reconnect an account": "accounts.md",
    "pause, roll back and resume a rollout": "rollout.md",
    "drain or pause a provider's queue": "queues.md",
    "recover after Redis lost its data": "redis-lost-data.md",
    "recover after a database outage": "database-outage.md",
    "rotate MAILRELAY_SECRET_KEY": "rotate-secret-key.md",
    "scale workers for a backlog": "scale-workers.md",
    "a poison message": "poison-message.md",
    "check and run the outbox's retention": "retention.md",
    "publish pending outcome notifications": "notifications.md",
}
# Pages that are not a runbook of their own: the index and the drills' walk-through.
NOT_RUNBOOKS = {"README.md", "drills.md"}
EXAMPLE = {"ID": "0b6f7c3e-1d2a-4c5b-9e8f-0a1b2c3d4e5f", "ADDRESS": "ops@example.com",
           "PROVIDER": "gmail"}


def alert_names() -> set[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def runbooks() -> list[Path]:
    return [page for page in pages() if page.name not in NOT_RUNBOOKS]


def test_every_alert_has_its_own_runbook_and_every_alert_page_an_alert() -> None:
    pages_ = {page.stem for page in (RUNBOOKS / "alerts").glob("*.md")}
    assert pages_ == alert_names()


def test_every_operation_has_a_runbook() -> None:
    missing = [what for what, name in OPERATIONS.items() if not (RUNBOOKS / name).is_file()]
    assert missing == []


@pytest.mark.parametrize("page", runbooks(), ids=lambda p: str(p.relative_to(RUNBOOKS)))
def test_every_runbook_says_what_it_means_how_to_confirm_mitigate_verify_and_escalate(
        page: Path) -> None:
    text = page.read_text()
    found = [part for part in PARTS
             if re.search(rf"^(#+ .*\b{part}|\*\*{part}\b)", text, re.M | re.I)]
    assert found == list(PARTS), f"{page.name}: missing {set(PARTS) - set(found)}"
    # A runbook is something to run: at least one command or query to confirm with.
    assert "```" in text, page.name


def test_the_index_lists_every_runbook_by_alert_and_by_symptom() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    by_alert, _, by_symptom = index.partition("## By symptom")
    assert by_symptom, "runbooks/README.md has no '## By symptom' section"
    for name in alert_names():
        assert f"(alerts/{name}.md)" in by_alert, name
    for page in runbooks():
        relative = str(page.relative_to(RUNBOOKS))
        if not relative.startswith("alerts/"):
            assert f"({relative})" in by_symptom, relative
    assert "(drills.md)" in index


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(RUNBOOKS)))
def test_every_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"https?://", target):
            continue  # outside the repository: not ours to check offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == [], page.name


def test_every_runbook_url_in_the_alerts_resolves_to_its_page() -> None:
    base = "https://github.com/mailrelay/mailrelay/blob/main/"
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                url = rule["annotations"]["runbook_url"]
                assert url.startswith(base) and (ROOT / url.removeprefix(base)).is_file(), url


def test_the_runbooks_quote_commands_sql_and_promql() -> None:
    # The extraction must find something, or every test below passes on nothing.
    assert len(all_commands()) > 60
    assert len(statements("promql")) > 30 and len(statements("sql")) >= 3


def _resolve(command: Command) -> tuple[click.Command, list[str], str]:
    words = [EXAMPLE.get(word, word) for word in command.args]
    found: click.Command = cli
    path = "mailrelay"
    while isinstance(found, click.Group):
        assert words, f"{command}: `{path}` needs a subcommand"
        sub = found.get_command(click.Context(found), words[0])
        assert sub is not None, f"{command}: no `{path} {words[0]}`"
        path, found, words = f"{path} {words[0]}", sub, words[1:]
    return found, words, path


@pytest.mark.parametrize("command", all_commands(), ids=str)
def test_every_command_parses_as_a_real_mailrelay_command(command: Command) -> None:
    unknown = [w for w in command.args if re.fullmatch(r"[A-Z][A-Z_]+|<[^>]+>", w)
               and w not in PLACEHOLDERS]
    assert unknown == [], f"{command}: unknown placeholders {unknown}"
    found, words, path = _resolve(command)
    try:
        # Parses every argument and option (types, choices, required ones) without running.
        found.make_context(path, list(words))
    except click.exceptions.Exit:
        pass  # --help
    except click.UsageError as err:
        pytest.fail(f"{command}: {err.format_message()}")


def test_every_promql_expression_is_accepted_by_a_real_prometheus(prometheus: Prometheus) -> None:
    assert refused_promql(prometheus.url) == []
