"""Beat's metric export against a real PostgreSQL outbox, Redis broker and Pushgateway."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from mailrelay import export
from mailrelay.client import submit
from mailrelay.config import get_settings
from mailrelay.errors import MailrelayError
from mailrelay.store import gauges
from mailrelay.store.db import get_engine
from mailrelay.tasks import queue_stats
from tests.integration.helpers import query, scalar
from tests.monitoring_servers import Pushgateway

pytestmark = pytest.mark.integration
INTERVALS = export.Intervals(export=30.0, rollout=60.0)


@pytest.fixture
def gateway_set(pushgateway: Pushgateway, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pushgateway]:
    monkeypatch.setenv("MAILRELAY_PUSHGATEWAY_URL", pushgateway.url)
    get_settings.cache_clear()
    yield pushgateway
    monkeypatch.delenv("MAILRELAY_PUSHGATEWAY_URL")
    get_settings.cache_clear()


def _message(sender: str, n: int) -> dict[str, object]:
    return {"from": sender, "to": [f"r{n}@example.org"], "subject": "s", "text": "t"}


def _one(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    # The gateway adds an empty instance: the grouping key is the job alone.
    wanted = tuple(sorted({"job": export.JOB, "instance": "", **labels}.items()))
    assert wanted in samples, (wanted, samples)
    return samples[wanted]


def test_the_export_pushes_the_outbox_and_the_queues(sink_account: str, clean_redis: None,
                                                     gateway_set: Pushgateway) -> None:
    ids = [submit(_message(sink_account, n)).message_id for n in range(5)]
    # No worker runs: five deliveries wait in mailrelay.sink. Shape the rows as a backlog,
    # an overdue retry, a dead lease and a failure would leave them.
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE messages SET created_at = now() - interval '100 seconds' "
                          "WHERE id = :id"), {"id": ids[0]})
        conn.execute(text("UPDATE messages SET state = 'retrying', "
                          "next_attempt_at = now() - interval '40 seconds' WHERE id = :id"),
                     {"id": ids[1]})
        conn.execute(text("UPDATE messages SET state = 'retrying', "
                          "next_attempt_at = now() + interval '1 hour' WHERE id = :id"),
                     {"id": ids[2]})
        conn.execute(text("UPDATE messages SET state = 'sending', lease_owner = 'w', "
                          "lease_expires_at = now() - interval '5 seconds' WHERE id = :id"),
                     {"id": ids[3]})
        conn.execute(text("UPDATE messages SET state = 'failed', error_code = 'provider_rejected', "
                          "updated_at = now() WHERE id = :id"), {"id": ids[4]})
        # Its outcome notification, unpublished for 200 s; and a published one, not counted.
        for replays, state in ((0, "pending"), (1, "published")):
            conn.execute(text(
                "INSERT INTO notifications (message_id, replays, outcome, state, task, queue, "
                "kwargs, created_at, next_try_at, tries) VALUES (:id, :replays, 'failed', "
                ":state, 't', 'q', '{}', (now() AT TIME ZONE 'UTC') - interval '200 seconds', "
                "now() AT TIME ZONE 'UTC', 0)"), {"id": ids[4], "replays": replays, "state": state})

    assert export.export(queue_stats.read, INTERVALS) is True

    def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return gateway_set.samples(name)

    messages = samples("mailrelay_outbox_messages")
    assert _one(messages, provider="sink", state="queued") == 1
    assert _one(messages, provider="sink", state="retrying") == 2
    assert _one(messages, provider="sink", state="sending") == 1
    assert _one(messages, provider="sink", state="failed") == 1
    age = _one(samples("mailrelay_outbox_oldest_queued_age_seconds"), provider="sink")
    assert 100 <= age < 130
    assert _one(samples("mailrelay_outbox_oldest_queued_age_seconds"), provider="gmail") == 0
    overdue = _one(samples("mailrelay_outbox_oldest_due_retrying_age_seconds"), provider="sink")
    assert 40 <= overdue < 70  # the one due in an hour is not overdue
    assert _one(samples("mailrelay_outbox_expired_leases"), provider="sink") == 1
    assert _one(samples("mailrelay_outbox_failed_last_hour"), provider="sink",
                code="provider_rejected") == 1
    assert _one(samples("mailrelay_accounts"), provider="sink", state="active") == 1
    assert _one(samples("mailrelay_notifications_pending")) == 1
    assert 200 <= _one(samples("mailrelay_notifications_oldest_pending_age_seconds")) < 230
    lengths = samples("mailrelay_queue_length")
    assert _one(lengths, queue="mailrelay.sink", provider="sink") == 5
    assert _one(lengths, queue="mailrelay.intake", provider="") == 0
    assert _one(samples("mailrelay_queue_consumers"), queue="mailrelay.sink", provider="sink") == 0
    assert _one(samples("mailrelay_export_interval_seconds")) == 30
    assert _one(samples("mailrelay_export_last_success_timestamp_seconds")) > 0
    # Nothing of the messages themselves, and no host or pid in the grouping key.
    body = gateway_set.metrics()
    assert sink_account not in body and "example.org" not in body
    assert not any(i in body for i in ids)
    for family in ("mailrelay_outbox_messages", "mailrelay_queue_length", "push_time_seconds"):
        for key in gateway_set.samples(family):
            assert dict(key)["instance"] == "" and dict(key)["job"] == export.JOB, key


def test_a_series_that_disappears_disappears(sink_account: str, clean_redis: None,
                                             gateway_set: Pushgateway) -> None:
    message_id = submit(_message(sink_account, 1)).message_id
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE messages SET state = 'failed', error_code = 'invalid_recipient', "
                          "updated_at = now() WHERE id = :id"), {"id": message_id})
    export.export(queue_stats.read, INTERVALS)
    assert gateway_set.samples("mailrelay_outbox_failed_last_hour")
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE messages SET updated_at = now() - interval '2 hours' "
                          "WHERE id = :id"), {"id": message_id})
    export.export(queue_stats.read, INTERVALS)
    assert gateway_set.samples("mailrelay_outbox_failed_last_hour") == {}


def test_a_failed_reading_pushes_nothing_so_the_export_goes_stale(
        sink_account: str, clean_redis: None, gateway_set: Pushgateway,
        monkeypatch: pytest.MonkeyPatch) -> None:
    export.export(queue_stats.read, INTERVALS)
    before = gateway_set.samples("mailrelay_export_last_success_timestamp_seconds")
    monkeypatch.setenv("MAILRELAY_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/none")
    get_settings.cache_clear()
    with pytest.raises(MailrelayError) as raised:
        export.export(queue_stats.read, INTERVALS)
    assert raised.value.code == "database_unavailable"
    assert gateway_set.samples("mailrelay_export_last_success_timestamp_seconds") == before


def test_without_a_pushgateway_the_export_logs_once_and_does_nothing(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "_warned_unset", False)
    get_settings.cache_clear()
    assert get_settings().pushgateway_url == ""
    read_queues_called = []
    with caplog.at_level(logging.INFO, logger="mailrelay.export"):
        for _ in range(3):
            assert export.export(lambda: read_queues_called.append(1) or {}, INTERVALS) is False
    assert read_queues_called == []
    notes = [r for r in caplog.records if "MAILRELAY_PUSHGATEWAY_URL" in r.getMessage()]
    assert len(notes) == 1


def test_the_export_queries_use_the_partial_indexes_on_a_large_outbox(clean_db: None) -> None:
    """50 000 sent rows and a handful in flight: the plans read the partial indexes only."""
    with get_engine().begin() as conn:
        conn.execute(text(
            "INSERT INTO messages (id, provider, state, size_bytes, recipient_count, "
            "attempt_count, created_at, updated_at, replays, retry_base, takeovers, verify_before_send) "
            "SELECT 'sent-' || n, 'gmail', 'sent', 100, 1, 1, now(), now(), 0, 0, 0, false "
            "FROM generate_series(1, 50000) AS n"))
        conn.execute(text(
            "INSERT INTO messages (id, provider, state, size_bytes, recipient_count, "
            "attempt_count, created_at, updated_at, replays, retry_base, takeovers, "
            "verify_before_send, error_code) "
            "SELECT 'f-' || n, 'gmail', CASE WHEN n % 2 = 0 THEN 'failed' ELSE 'queued' END, "
            "100, 1, 1, now(), now(), 0, 0, 0, false, 'provider_rejected' "
            "FROM generate_series(1, 20) AS n"))
        conn.execute(text("ANALYZE messages"))
    now = scalar("SELECT now()")
    plans = {}
    for name, statement in {"pending": gauges.pending_statement(now),
                            "failed_last_hour": gauges.failed_statement(now),
                            "failed": gauges.failed_total_statement()}.items():
        sql = str(statement.compile(dialect=postgresql.dialect(),  # type: ignore[attr-defined]
                                    compile_kwargs={"literal_binds": True}))
        plans[name] = "\n".join(row[0] for row in query("EXPLAIN " + sql))
    print("\n\n".join(f"-- {name}\n{plan}" for name, plan in plans.items()))  # the note shows them
    assert "ix_messages_pending" in plans["pending"], plans["pending"]
    assert "ix_messages_failed" in plans["failed_last_hour"], plans["failed_last_hour"]
    assert "ix_messages_failed" in plans["failed"], plans["failed"]
    for name, plan in plans.items():
        assert "Seq Scan on messages" not in plan, (name, plan)
    reading = gauges.read()
    assert reading.messages[("gmail", "queued")] == 10
    assert reading.messages[("gmail", "failed")] == 10
    assert ("gmail", "sent") not in reading.messages
