"""Every command that changes data takes --dry-run: it runs the same checks, exits with
the same code as the real command for the same input, says what would change, and
changes nothing (every table and the test Redis databases compared before and after)
against the real PostgreSQL and Redis. Each command's own test file checks its dry run in
more detail against the real command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result

from mailrelay.auth import accounts
from mailrelay.cli import cli
from mailrelay.config import get_settings
from mailrelay.intake import take_in
from mailrelay.rollout import gate
from tests.unit.cli.conftest import snapshot

SENDER = "user1@example.com"
RELAY = "relay@example.net"


def run(*args: str) -> Result:
    get_settings.cache_clear()
    gate.forget()
    try:
        return CliRunner().invoke(cli, list(args), env={"MAILRELAY_OPERATOR": "alice",
                                                        "MAILRELAY_FLOWER_AUTH": "ops:pw"})
    finally:
        get_settings.cache_clear()
        gate.forget()


@pytest.fixture
def world(clean_db: None, clean_redis: None, secret_key: str) -> None:
    accounts.add("smtp", RELAY, tenant="smtp+insecure://127.0.0.1:2525")
    accounts.add("sink", SENDER, client_secret="s3cret")
    take_in({"from": SENDER, "to": ["ada@example.org"], "subject": "s", "text": "t"},
            request_id="req-1", actor="test")
    result = run("rollout", "set", "sink", "--fallback", RELAY, "--percent", "25", "--reason", "r")
    assert result.exit_code == 0, result.output


# (arguments, exit code, words the dry run prints)
DRY_RUNS = [
    (("accounts", "set", SENDER, "--rate-limit", "30"), 0,
     "would set rate limit no limit (provider default) -> 30/min"),
    (("accounts", "set", "nobody@example.com", "--rate-limit", "30"), 3, "no account"),
    (("accounts", "remove", SENDER), 1, "has 1 messages"),
    (("accounts", "remove", SENDER, "--force"), 0, "would be disabled"),
    (("accounts", "remove", RELAY), 0, "would be removed"),
    (("accounts", "rotate-key"), 0, "would re-encrypt 1 secret"),
    (("rollout", "set", "sink", "--percent", "50", "--reason", "r"), 0, "would be changed"),
    (("rollout", "set", "smtp", "--percent", "50", "--reason", "r"), 0, "would be created"),
    (("rollout", "set", "sink", "--fallback", "nobody@example.com", "--reason", "r"), 2,
     "no such account"),
    (("rollout", "pause", "sink", "--reason", "r"), 0, "would be sink: paused at 25%"),
    (("rollout", "resume", "sink", "--reason", "r"), 1, "only a paused or aborted one"),
    (("rollout", "rollback", "sink", "--reason", "r"), 0, "would roll back to 0%"),
    (("rollout", "remove", "sink", "--reason", "r", "--yes"), 0, "would be sink: rollout removed"),
    (("rollout", "remove", "sink", "--reason", "r"), 2, "pass --yes without a terminal"),
    (("rollout", "pause", "gmail", "--reason", "r"), 3, "no rollout for gmail"),
    (("db", "upgrade"), 0, "nothing to apply"),
    (("db", "upgrade", "nonsense"), 2, "No such revision"),
    (("db", "purge"), 0, "would delete 0 messages and drop 0 payloads"),
    (("beat",), 0, "mailrelay.reconcile every 15.0 s"),
    (("flower",), 0, "celery -A mailrelay.celery_app flower --port=5555"),
]


@pytest.mark.parametrize(("args", "code", "words"), DRY_RUNS, ids=lambda v: " ".join(v)
                         if isinstance(v, tuple) else str(v))
def test_a_dry_run_exits_as_the_real_command_and_changes_nothing(
        world: None, args: tuple[str, ...], code: int, words: str) -> None:
    before = snapshot()
    result = run(*args, "--dry-run")
    assert result.exit_code == code, result.output
    assert words in result.output
    assert snapshot() == before
    assert "s3cret" not in result.output and "ops:pw" not in result.output and "pw" not in result.output


def test_the_real_rollout_resume_refuses_a_running_rollout_with_the_same_code(world: None) -> None:
    assert run("rollout", "resume", "sink", "--reason", "r").exit_code == 1


def test_a_paused_rollout_previews_its_resume_and_the_json_says_dry_run(world: None) -> None:
    assert run("rollout", "pause", "sink", "--reason", "r").exit_code == 0
    before = snapshot()
    result = run("rollout", "resume", "sink", "--reason", "r", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"provider": "sink", "state": "running", "percent": 25,
                                         "dry_run": True}
    assert snapshot() == before


def test_a_rollback_preview_counts_the_messages_it_would_move(world: None) -> None:
    result = run("rollout", "rollback", "sink", "--reason", "r", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["state"], shown["percent"], shown["rerouted"], shown["dry_run"]) == (
        "aborted", 0, 1, True)


def test_a_reconnect_preview_checks_the_account_and_opens_nothing(world: None) -> None:
    missing = run("auth", "reconnect", "nobody@example.com", "--dry-run")
    assert missing.exit_code == 3
    not_consent = run("auth", "reconnect", SENDER, "--dry-run")
    assert not_consent.exit_code == 2 and "not connected by consent" in not_consent.output
