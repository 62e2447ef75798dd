"""`mailrelay db stats` and `db purge`, and what a purge changes for `status` and `replay`,
on the real PostgreSQL and on a fresh SQLite outbox."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailrelay.auth import accounts
from mailrelay.cli import cli
from mailrelay.config import get_settings
from mailrelay.message import validate
from mailrelay.store import migrate, outbox
from mailrelay.store.outbox import Outcome
from mailrelay.store.states import State
from tests.unit.cli.conftest import snapshot

SENDER = "sender@example.com"
DAY = dt.timedelta(days=1)
TABLES = {"accounts", "messages", "attempts", "audit", "sink_deliveries", "rollouts",
          "rollout_decisions", "notifications"}


def run(*args: str) -> Result:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env={"MAILRELAY_OPERATOR": "alice"})
    finally:
        get_settings.cache_clear()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clean_db: None,
            clean_redis: None) -> Iterator[str]:
    """The real PostgreSQL database, or a fresh SQLite file, with a sink account."""
    if request.param == "sqlite":
        saved = os.environ["MAILRELAY_DATABASE_URL"]
        os.environ["MAILRELAY_DATABASE_URL"] = f"sqlite:///{tmp_path / 'outbox.db'}"
        get_settings.cache_clear()
        migrate.upgrade(get_settings().database_url)
    accounts.add("sink", SENDER)
    try:
        yield request.param
    finally:
        if request.param == "sqlite":
            os.environ["MAILRELAY_DATABASE_URL"] = saved
            get_settings.cache_clear()


def _ended(state: State, days_ago: float) -> str:
    """A message that ended ``days_ago`` (its claim and finish then), through the outbox."""
    account = outbox.find_account(SENDER)
    assert account is not None
    at = outbox.utcnow() - dt.timedelta(days=days_ago)
    mid = outbox.accept(validate({"from": SENDER, "to": ["r@example.org"], "subject": "s",
                                  "text": "t" * 1000}), account, request_id=None, actor="t",
                        size_bytes=1000).message_id
    claim = outbox.claim(mid, worker="w", lease_seconds=60, now=at)
    assert claim is not None
    outcome = (Outcome(State.SENT, provider_message_id="p") if state is State.SENT
               else Outcome(State.FAILED, code="provider_rejected"))
    assert outbox.finish(claim, outcome, latency_ms=1, now=at)
    return mid


def _stats() -> dict[str, object]:
    result = run("db", "stats", "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_stats_show_sizes_and_what_a_purge_removes_and_the_purge_removes_it(backend: str) -> None:
    for days in (100, 95):
        _ended(State.SENT, days)  # past the row retention (90 d)
    for days in (10, 8, 8):
        _ended(State.FAILED, days)  # past the payload retention (7 d)
    _ended(State.SENT, 1)

    before = _stats()
    assert set(before) == {"database_url", "backend", "database_bytes", "tables", "retention"}
    assert before["backend"] == backend
    tables = before["tables"]
    assert isinstance(tables, dict) and set(tables) == TABLES
    assert all(set(size) == {"rows", "bytes"} for size in tables.values())
    assert tables["messages"]["rows"] == 6 and tables["attempts"]["rows"] == 6
    assert all(isinstance(size["bytes"], int) for size in tables.values())
    assert before["retention"] == {"payloads_to_drop": 3, "messages_to_delete": 2,
                                   "payload_retention_s": 7 * 86400,
                                   "row_retention_s": 90 * 86400}

    unchanged = snapshot()
    dry = run("db", "purge", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout) == {"dry_run": True, "payload_retention_s": 7 * 86400,
                                      "row_retention_s": 90 * 86400, "payloads_to_drop": 3,
                                      "messages_to_delete": 2}
    assert snapshot() == unchanged

    refused = run("db", "purge", "--json")  # deleting is for good: asked first
    assert refused.exit_code == 2 and "pass --yes" in refused.output
    assert "delete 2 messages and drop 3 payloads" in refused.output
    assert snapshot() == unchanged
    done = run("db", "purge", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert (report["dry_run"], report["payloads_dropped"], report["messages_deleted"],
            report["attempts_deleted"]) == (False, 3, 2, 2)
    assert report["audit_deleted"] >= 2 * 3  # intake, claim, finish of each

    after = _stats()
    assert after["retention"] == {**before["retention"], "payloads_to_drop": 0,  # type: ignore[dict-item]
                                  "messages_to_delete": 0}
    assert after["tables"]["messages"]["rows"] == 4  # type: ignore[index]
    assert after["tables"]["audit"]["rows"] < tables["audit"]["rows"]  # type: ignore[index]
    again = run("db", "purge")  # nothing due: nothing to confirm
    assert again.exit_code == 0 and "deleted 0 messages" in again.stdout


def test_stats_print_a_table_and_the_purge_a_line(backend: str) -> None:
    _ended(State.SENT, 8)
    shown = run("db", "stats")
    assert shown.exit_code == 0, shown.output
    assert "outbox tables" in shown.stdout and "messages" in shown.stdout
    assert "1 payloads to drop" in shown.stdout and "7 d" in shown.stdout
    dry = run("db", "purge", "--dry-run")
    assert dry.stdout == ("would delete 0 messages and drop 1 payloads "
                          "(dry run: nothing removed)\n")


def test_status_shows_the_purge_and_replay_refuses_the_message(backend: str) -> None:
    gone, kept = _ended(State.FAILED, 8), _ended(State.FAILED, 1)
    assert json.loads(run("status", gone, "--json").stdout)["payload_purged_at"] is None
    assert run("db", "purge", "--yes").exit_code == 0

    info = json.loads(run("status", gone, "--json").stdout)
    assert info["state"] == "failed" and info["payload_purged_at"]
    assert info["attempts"] and info["history"] and info["message_id_header"]
    assert "payload_purged_at" in run("status", gone).stdout

    result = run("replay", gone, kept, "--reason", "r", "--yes", "--json")
    assert result.exit_code == 1, result.output  # refused; the other one is still replayed
    report = json.loads(result.stdout)
    assert report["replayed"] == 1 and report["skipped_by_reason"] == {"payload_purged": 1}
    refused = {m["id"]: m for m in report["messages"]}[gone]
    assert (refused["refusal"], refused["result"]) == ("payload_purged", "skipped")
    assert result.stderr.startswith("mailrelay: 1 failed message cannot be replayed")
    assert "payload_purged" in result.stderr
    assert [(outbox.status(m) or {}).get("state") for m in (gone, kept)] == ["failed", "queued"]
    # The dry run says the same, with the same exit code.
    preview = run("replay", gone, "--dry-run")
    assert preview.exit_code == 1 and "payload_purged" in preview.stdout
