"""`mailrelay failed` and `mailrelay replay` against the real database and broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kombu.exceptions import OperationalError
from sqlalchemy import select

from mailrelay.cli import cli
from mailrelay.config import get_settings
from mailrelay.message import validate
from mailrelay.store import outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import AUDIT
from mailrelay.store.outbox import Outcome
from mailrelay.store.states import State


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env={"MAILRELAY_OPERATOR": "alice", **(env or {})})
    finally:
        get_settings.cache_clear()


def _message(sink_account: str, state: State, code: str = "invalid_recipient", subject: str = "s") -> str:
    ref = outbox.find_account(sink_account)
    assert ref is not None
    mid = outbox.accept(validate({"from": sink_account, "to": ["r@example.org"], "subject": subject,
                                  "text": "t"}), ref, request_id=None, actor="t", size_bytes=1).message_id
    if state is not State.QUEUED:
        claim = outbox.claim(mid, worker="w", lease_seconds=60)
        assert claim is not None
        outbox.finish(claim, Outcome(state, code=None if state is State.SENT else code,
                                     provider_message_id="p" if state is State.SENT else None),
                      latency_ms=1)
    return mid


@pytest.fixture
def messages(sink_account: str, clean_redis: None) -> dict[str, Any]:
    return {"failed": [_message(sink_account, State.FAILED, subject=str(n)) for n in range(3)],
            "other_code": _message(sink_account, State.FAILED, code="permission_denied"),
            "sent": _message(sink_account, State.SENT)}


def _states(ids: list[str]) -> list[str]:
    return [(outbox.status(mid) or {}).get("state", "") for mid in ids]


def _replay_audits(action: str = "replay") -> list[Any]:
    with get_engine().connect() as conn:
        return list(conn.execute(select(AUDIT).where(AUDIT.c.action == action)
                                 .order_by(AUDIT.c.id)).all())


def test_failed_lists_as_json_and_as_a_table(messages: dict[str, Any]) -> None:
    result = run("failed", "--code", "invalid_recipient", "--since", "1h", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert sorted(r["id"] for r in rows) == sorted(messages["failed"])
    assert {r["error_code"] for r in rows} == {"invalid_recipient"}
    assert len(json.loads(run("failed", "--limit", "2", "--json").stdout)) == 2
    assert json.loads(run("failed", "--since", "2999-01-01T00:00", "--json").stdout) == []
    table = run("failed")
    assert table.exit_code == 0 and messages["other_code"] in table.stdout
    assert "permission_denied" in table.stdout and messages["sent"] not in table.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["--since", "yesterday"], "ISO time"),
    (["--code", "invalid_recipent"], "did you mean 'invalid_recipient'"),
    (["--provider", "gmial"], "gmial"),
])
def test_failed_refuses_bad_filters(clean_db: None, args: list[str], needle: str) -> None:
    result = run("failed", *args)
    assert result.exit_code == 2 and needle in result.output


def test_a_dry_run_says_what_and_why_and_changes_nothing(messages: dict[str, Any]) -> None:
    ids = [*messages["failed"], messages["sent"]]
    result = run("replay", *ids, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] and report["would_replay"] == 3 and report["replayed"] == 0
    assert report["skipped_by_reason"] == {"sent": 1}
    verdicts = {m["id"]: (m["result"], m["verdict"]) for m in report["messages"]}
    assert verdicts[messages["sent"]] == ("skipped", "sent: never sent again")
    assert verdicts[messages["failed"][0]] == ("would replay", "failed: will be sent again")
    assert _states(ids) == ["failed"] * 3 + ["sent"]
    assert _replay_audits() == [] and _replay_audits("replay_run") == []
    table = run("replay", "--code", "invalid_recipient", "--dry-run")
    assert table.exit_code == 0 and "would replay 3, skipped 0" in table.stdout
    assert "failed: will be sent again" in table.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["--code", "invalid_recipient", "--yes"], "--reason is required"),
    (["--code", "invalid_recipient", "--reason", "  ", "--yes"], "--reason is required"),
    (["--reason", "r", "--yes"], "at least one of --code"),
    (["--limit", "5", "--reason", "r", "--yes"], "at least one of --code"),
    (["some-id", "--code", "invalid_recipient", "--reason", "r", "--yes"], "not both"),
    (["--code", "invalid_recipient", "--reason", "r"], "run in a terminal or pass --yes"),
])
def test_replay_refuses_unclear_requests(messages: dict[str, Any], args: list[str],
                                          needle: str) -> None:
    result = run("replay", *args)
    assert result.exit_code == 2 and needle in result.output
    assert _states(messages["failed"]) == ["failed"] * 3
    assert _replay_audits() == [] and _replay_audits("replay_run") == []


def test_replay_queues_failed_messages_once_and_audits_the_operator(messages: dict[str, Any]) -> None:
    first = run("replay", "--code", "invalid_recipient", "--reason", "recipient fixed", "--yes")
    assert first.exit_code == 0, first.output
    assert "replayed 3, skipped 0" in first.stdout
    assert _states(messages["failed"]) == ["queued"] * 3
    assert _states([messages["other_code"], messages["sent"]]) == ["failed", "sent"]
    audits = _replay_audits()
    assert sorted(a.message_id for a in audits) == sorted(messages["failed"])
    assert {(a.actor, a.reason, a.code) for a in audits} == {
        ("alice", "recipient fixed", "invalid_recipient")}

    again = run("replay", "--code", "invalid_recipient", "--reason", "again", "--yes", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["replayed"] == 0
    assert len(_replay_audits()) == 3
    # Each run is on record, also the one that found nothing failed any more.
    assert [(a.actor, a.reason, a.code, a.message_id) for a in _replay_audits("replay_run")] == [
        ("alice", "recipient fixed", "invalid_recipient", None),
        ("alice", "again", "invalid_recipient", None)]


def test_replay_by_id_skips_what_is_not_failed_and_names_unknown_ids(messages: dict[str, Any]) -> None:
    target = messages["failed"][0]
    result = run("replay", target, messages["sent"], "no-such-id", "--reason", "r", "--yes", "--json")
    assert result.exit_code == 3, result.output  # an unknown id; the others are done
    report = json.loads(result.stdout)
    assert report["replayed"] == 1
    assert report["skipped_by_reason"] == {"sent": 1, "no such message": 1}
    assert _states([target, messages["sent"]]) == ["queued", "sent"]
    assert [a.message_id for a in _replay_audits()] == [target]


def test_a_replay_whose_publish_fails_is_left_to_the_reconciler(
        messages: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[str] = []

    def broker_down(message_id: str, provider: str) -> None:
        published.append(message_id)
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr("mailrelay.tasks.routing.enqueue_delivery", broker_down)
    result = run("replay", "--code", "invalid_recipient", "--reason", "r", "--yes", "--json")
    assert result.exit_code == 69, result.output
    report = json.loads(result.stdout)
    assert (report["replayed"], report["not_enqueued"]) == (3, 3)
    assert {m["result"] for m in report["messages"]} == {"replayed; not enqueued"}
    assert len(published) == 1  # the broker is down: not tried for every message
    assert "broker unavailable" in result.stderr and "MAILRELAY_BROKER_URL" in result.stderr
    assert "3 replayed messages are queued" in result.stderr and "reconciler" in result.stderr
    assert _states(messages["failed"]) == ["queued"] * 3
