"""On-call store queries and the replay transition, on PostgreSQL and SQLite."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text

from mailrelay import replay
from mailrelay.auth import accounts
from mailrelay.errors import ValidationError
from mailrelay.message import validate
from mailrelay.store import oncall, outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import AUDIT, MESSAGES
from mailrelay.store.outbox import AccountRef, Outcome
from mailrelay.store.states import State

SINK, SMTP = "sender@example.com", "relay@example.net"


def _account(provider: str = "sink", address: str = SINK) -> AccountRef:
    accounts.add(provider, address, tenant="smtp+insecure://127.0.0.1:2525" if provider == "smtp" else None)
    found = outbox.find_account(address)
    assert found is not None
    return found


def _queued(account: AccountRef, subject: str = "s") -> str:
    message = validate({"from": account.address, "to": ["rcpt@example.org"], "subject": subject,
                        "text": "secret body"})
    return outbox.accept(message, account, request_id=None, actor="t", size_bytes=10).message_id


def _finish(mid: str, outcome: Outcome, now: dt.datetime | None = None) -> None:
    claim = outbox.claim(mid, worker="w", lease_seconds=60, now=now)
    assert claim is not None
    assert outbox.finish(claim, outcome, latency_ms=1, now=now)


def _failed(account: AccountRef, code: str = "invalid_recipient", *, verify: bool = False,
            subject: str = "s", now: dt.datetime | None = None) -> str:
    mid = _queued(account, subject)
    _finish(mid, Outcome(State.FAILED, code=code, detail=f"{code} detail", verify=verify), now)
    return mid


def _row(mid: str) -> Any:
    with get_engine().connect() as conn:
        return conn.execute(select(MESSAGES).where(MESSAGES.c.id == mid)).one()


def _audits(mid: str, action: str = "replay") -> list[Any]:
    with get_engine().connect() as conn:
        return list(conn.execute(select(AUDIT).where(AUDIT.c.message_id == mid,
                                                     AUDIT.c.action == action)
                                 .order_by(AUDIT.c.id)).all())


def test_failed_lists_only_failed_messages_newest_first_without_content(backend: str) -> None:
    sink, smtp = _account(), _account("smtp", SMTP)
    now = outbox.utcnow()
    old = _failed(sink, "invalid_recipient", now=now - dt.timedelta(hours=3))
    recent = _failed(sink, "permission_denied", verify=True, now=now - dt.timedelta(minutes=5))
    other = _failed(smtp, "invalid_recipient", now=now - dt.timedelta(minutes=1))
    _finish(_queued(sink), Outcome(State.SENT, provider_message_id="p"))
    _queued(sink)  # queued
    outbox.reject({}, ValidationError("invalid_address", "bad"), request_id="r", actor="t")

    rows = oncall.failed()
    assert [r["id"] for r in rows] == [other, recent, old]
    first = rows[1]
    assert {k: first[k] for k in ("account", "provider", "error_code", "error_detail", "attempts",
                                  "verify", "replays")} == {
        "account": SINK, "provider": "sink", "error_code": "permission_denied",
        "error_detail": "permission_denied detail", "attempts": 1, "verify": True, "replays": 0}
    assert first["failed_at"] and first["created_at"]
    assert "secret body" not in repr(rows) and "payload" not in first

    assert [r["id"] for r in oncall.failed(provider="smtp")] == [other]
    assert [r["id"] for r in oncall.failed(account=SINK.upper())] == [recent, old]
    assert [r["id"] for r in oncall.failed(code="invalid_recipient")] == [other, old]
    assert [r["id"] for r in oncall.failed(since=now - dt.timedelta(hours=1))] == [other, recent]
    assert [r["id"] for r in oncall.failed(limit=1)] == [other]
    assert oncall.failed(provider="sink", code="invalid_recipient",
                         since=now - dt.timedelta(hours=1)) == []


def test_the_failed_query_can_use_the_partial_index(backend: str) -> None:
    query = oncall.failed_query(code="invalid_recipient", since=outbox.utcnow())
    with get_engine().begin() as conn:
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        if backend == "postgresql":
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(r[0] for r in conn.execute(text(f"EXPLAIN {sql}")))
        else:
            plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    assert "ix_messages_failed" in plan, plan


def test_select_for_replay_by_ids_gives_each_a_verdict(backend: str) -> None:
    sink, smtp = _account(), _account("smtp", SMTP)
    plain = _failed(sink)
    unknown = _failed(sink, "provider_timeout", verify=True)
    unknown_smtp = _failed(smtp, "provider_timeout", verify=True)
    sent = _queued(sink)
    _finish(sent, Outcome(State.SENT, provider_message_id="p"))
    queued = _queued(sink)
    rejected = outbox.reject({}, ValidationError("invalid_address", "bad"), request_id="r",
                             actor="t").message_id

    ids = [plain, unknown, unknown_smtp, sent, queued, rejected, "no-such-id", plain]
    got = replay.select_for_replay(ids)
    assert [(c.id, c.state, c.replay, c.verdict) for c in got] == [
        (plain, "failed", True, "failed: will be sent again"),
        (unknown, "failed", True, "failed after an attempt whose outcome is unknown: the provider "
                                  "is asked first, then sent only if it has no such Message-ID"),
        (unknown_smtp, "failed", True, replay.CANNOT_VERIFY),
        (sent, "sent", False, "sent: never sent again"),
        (queued, "queued", False, "queued: still in flight"),
        (rejected, "rejected", False, "rejected: invalid request, cannot be sent"),
        ("no-such-id", None, False, "no such message"),
    ]
    assert got[1].verify and got[1].error_code == "provider_timeout" and got[1].account == SINK


def test_select_for_replay_by_filters_takes_failed_messages_only(backend: str) -> None:
    sink = _account()
    first = _failed(sink, "invalid_recipient", subject="1")
    _failed(sink, "permission_denied", subject="2")
    _finish(_queued(sink, "3"), Outcome(State.SENT, provider_message_id="p"))
    got = replay.select_for_replay(code="invalid_recipient")
    assert [(c.id, c.replay) for c in got] == [(first, True)]
    assert len(replay.select_for_replay(provider="sink")) == 2
    assert len(replay.select_for_replay(provider="sink", limit=1)) == 1
    with pytest.raises(ValueError, match="not both"):
        replay.select_for_replay([first], code="invalid_recipient")


def test_replay_queues_a_failed_message_with_a_fresh_budget_and_an_audit_row(backend: str) -> None:
    sink = _account()
    mid = _queued(sink)
    now = outbox.utcnow()
    _finish(mid, Outcome(State.RETRYING, code="provider_timeout", next_attempt_at=now, verify=True))
    _finish(mid, Outcome(State.FAILED, code="provider_timeout", detail="gave up", verify=True))
    later = now + dt.timedelta(minutes=5)

    assert oncall.replay(mid, operator="alice", reason="provider outage over", now=later)
    row = _row(mid)
    assert (row.state, row.prev_state, row.error_code, row.error_detail) == (
        "queued", "failed", None, None)
    assert (row.attempt_count, row.retry_base, row.retry_since, row.replays) == (2, 2, later, 1)
    assert row.next_attempt_at is None and row.lease_owner is None and row.lease_expires_at is None
    assert row.verify_before_send is True  # the provider is asked before the resend
    assert row.updated_at == later  # the reconciler's clock: re-enqueued if the publish is lost
    [audit] = _audits(mid)
    assert (audit.actor, audit.reason, audit.code, audit.from_state, audit.to_state, audit.at) == (
        "alice", "provider outage over", "provider_timeout", "failed", "queued", later)
    assert oncall.failed() == []

    # The next claim carries the fresh budget: attempts and age count from the replay.
    claim = outbox.claim(mid, worker="w", lease_seconds=60, now=later)
    assert claim is not None and claim.verify
    assert (claim.attempt_number, claim.retry_base, claim.budget_attempt) == (3, 2, 1)
    assert claim.retry_since == later and claim.window_start == later
    assert claim.created_at < later


def test_a_message_never_replayed_keeps_its_intake_budget(backend: str) -> None:
    mid = _queued(_account())
    claim = outbox.claim(mid, worker="w", lease_seconds=60)
    assert claim is not None
    assert (claim.retry_base, claim.retry_since, claim.budget_attempt) == (0, None, 1)
    assert claim.window_start == claim.created_at


def test_a_second_replay_and_a_sent_message_change_nothing(backend: str) -> None:
    sink = _account()
    mid = _failed(sink)
    assert oncall.replay(mid, operator="alice", reason="first")
    before = _row(mid)
    assert not oncall.replay(mid, operator="bob", reason="second")
    assert _row(mid) == before
    assert [a.reason for a in _audits(mid)] == ["first"]

    sent = _queued(sink, "sent")
    _finish(sent, Outcome(State.SENT, provider_message_id="p"))
    before = _row(sent)
    assert not oncall.replay(sent, operator="alice", reason="oops")
    assert _row(sent) == before and _audits(sent) == []
    assert not oncall.replay("no-such-id", operator="alice", reason="x")


def test_concurrent_replays_of_one_message_queue_it_once(backend: str) -> None:
    mid = _failed(_account())
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contend(n: int) -> None:
        barrier.wait()
        results.append(oncall.replay(mid, operator=f"op{n}", reason="race"))

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert _row(mid).replays == 1
    with get_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(AUDIT)
                            .where(AUDIT.c.action == "replay")).scalar() == 1
