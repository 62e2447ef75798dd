"""Beat's retention job as Celery runs it: counts removed, counted in metrics, logged as
counts only (no id, no address, no content)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from prometheus_client import REGISTRY

from mailrelay.message import validate
from mailrelay.store import outbox
from mailrelay.store.outbox import Outcome
from mailrelay.store.states import State
from mailrelay.tasks.control import purge_outbox


def _removed(kind: str) -> float:
    return REGISTRY.get_sample_value("mailrelay_retention_removed_total", {"kind": kind}) or 0.0


def _sent(sender: str, days_ago: int) -> str:
    account = outbox.find_account(sender)
    assert account is not None
    at = outbox.utcnow() - dt.timedelta(days=days_ago)
    mid = outbox.accept(validate({"from": sender, "to": ["ada@example.org"], "subject": "s",
                                  "text": "secret words"}), account, request_id=None, actor="t",
                        size_bytes=10).message_id
    claim = outbox.claim(mid, worker="w", lease_seconds=60, now=at)
    assert claim is not None
    assert outbox.finish(claim, Outcome(State.SENT, provider_message_id="p"), latency_ms=1, now=at)
    return mid


def test_the_beat_job_removes_counts_and_logs_counts_only(
        sink_account: str, caplog: pytest.LogCaptureFixture) -> None:
    old, week, new = _sent(sink_account, 100), _sent(sink_account, 10), _sent(sink_account, 1)
    before = {kind: _removed(kind) for kind in ("payloads", "messages", "attempts", "audit")}
    with caplog.at_level(logging.INFO, logger="mailrelay"):
        result = purge_outbox.apply().get()
    assert result == {"payloads": 1, "messages": 1, "attempts": 1, "audit": 3,
                      "notifications": 0, "complete": True}
    assert {kind: _removed(kind) - before[kind] for kind in before} == {
        "payloads": 1, "messages": 1, "attempts": 1, "audit": 3}
    assert outbox.status(old) is None
    assert (outbox.status(week) or {})["payload_purged_at"]
    assert (outbox.status(new) or {})["payload_purged_at"] is None
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "deleted 1 messages (1 attempts, 3 audit rows, 0 notifications), dropped 1 payloads" in logged
    assert not [text for text in (old, week, new, sink_account, "ada@", "secret words")
                if text in logged]
