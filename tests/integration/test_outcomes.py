"""Retry, permanent failure and lost-response paths through real workers and the sink."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from mailrelay.client import submit
from mailrelay.providers.sink import inject_fault
from mailrelay.store import outbox
from tests.integration.helpers import final, scalar
from tests.processes import Worker

pytestmark = pytest.mark.integration

MESSAGE = {"from": "sender@example.com", "to": ["rcpt@example.org"], "subject": "s", "text": "t"}


@pytest.fixture
def worker(sink_account: str, clean_redis: None, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker("mailrelay.sink", concurrency=2)


def test_rate_limited_waits_for_retry_after_then_sends(worker: Worker) -> None:
    inject_fault("rate_limited", retry_after=2)
    info = final(submit(MESSAGE).message_id)
    attempts = info["attempts"]
    assert info["state"] == "sent" and info["error_code"] is None
    assert [a["outcome"] for a in attempts] == ["retry", "sent"]  # type: ignore[index]
    first_end = dt.datetime.fromisoformat(attempts[0]["finished_at"])  # type: ignore[index]
    second_start = dt.datetime.fromisoformat(attempts[1]["started_at"])  # type: ignore[index]
    assert attempts[0]["error_code"] == "rate_limited"  # type: ignore[index]
    assert second_start - first_end >= dt.timedelta(seconds=1.9)
    assert scalar("SELECT count(*) FROM sink_deliveries") == 1


def test_permanent_error_fails_after_one_attempt(worker: Worker) -> None:
    inject_fault("invalid_recipient")
    info = final(submit(MESSAGE).message_id)
    assert info["state"] == "failed" and info["error_code"] == "invalid_recipient"
    assert len(info["attempts"]) == 1  # type: ignore[arg-type]
    assert scalar("SELECT count(*) FROM sink_deliveries") == 0


def test_lost_response_is_verified_not_resent(worker: Worker) -> None:
    # The sink records the message, then the "response" is lost: outcome unknown.
    inject_fault("provider_timeout", after_send=True, retry_after=1)
    info = final(submit(MESSAGE).message_id)
    assert info["state"] == "sent"
    outcomes = [(a["outcome"], a["error_code"]) for a in info["attempts"]]  # type: ignore[union-attr]
    assert outcomes == [("retry", "provider_timeout"), ("sent", None)]
    assert "not sent again" in info["attempts"][1]["detail"]  # type: ignore[index]
    assert scalar("SELECT count(*) FROM sink_deliveries") == 1


def test_transient_errors_back_off_until_sent(worker: Worker) -> None:
    inject_fault("provider_unavailable", count=2, retry_after=0.5)
    info = final(submit(MESSAGE).message_id)
    assert info["state"] == "sent"
    assert [a["outcome"] for a in info["attempts"]] == ["retry", "retry", "sent"]  # type: ignore[union-attr]
    assert info["attempt_count"] == 3


def test_corrupt_payload_row_fails_without_crashing(worker: Worker) -> None:
    from sqlalchemy import text

    from mailrelay.message import validate
    from mailrelay.store.db import get_engine
    from mailrelay.tasks.routing import enqueue_delivery

    account = outbox.find_account("sender@example.com")
    assert account is not None
    mid = outbox.accept(validate(MESSAGE), account, request_id=None, actor="t", size_bytes=1).message_id
    with get_engine().begin() as conn:  # not yet enqueued, so no worker races the corruption
        conn.execute(text("UPDATE messages SET payload = '{not json' WHERE id = :i"), {"i": mid})
    enqueue_delivery(mid, "sink")
    info = final(mid)
    assert info["state"] == "failed" and info["error_code"] == "invalid_message"
    assert "stored payload" in str(info["error_detail"])
