from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, text

from mailrelay import replay
from mailrelay.auth import accounts
from mailrelay.errors import ValidationError
from mailrelay.message import validate
from mailrelay.store import oncall, outbox, retention
from mailrelay.store.db import get_engine
from mailrelay.store.models import ATTEMPTS, AUDIT, MESSAGES
from mailrelay.store.outbox import Outcome
from mailrelay.store.retention import Due, Removed, Retention, due, expire_keys, purge
from mailrelay.store.states import State

SENDER = "sender@example.com"
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


def _accept(key: str, subject: str = "s") -> str:
    account = outbox.find_account(SENDER)
    assert account is not None
    message = validate({"from": SENDER, "to": ["r@example.org"], "subject": subject, "text": "t",
                        "idempotency_key": key})
    return outbox.accept(message, account, request_id=None, actor="t", size_bytes=1).message_id


def _send(message_id: str) -> None:
    claim = outbox.claim(message_id, worker="w", lease_seconds=60)
    assert claim is not None
    outbox.finish(claim, Outcome(State.SENT, provider_message_id="p"), latency_ms=1)


def test_finished_messages_let_their_keys_go_after_the_retention(backend: str) -> None:
    accounts.add("sink", SENDER)
    sent, pending = _accept("k-sent"), _accept("k-pending")
    _send(sent)
    assert expire_keys(DAY) == 0  # too young
    assert _accept("k-sent") == sent  # still the same message
    later = outbox.utcnow() + DAY + dt.timedelta(seconds=1)
    assert expire_keys(DAY, now=later, batch=1) == 1  # batches end when one comes back short
    # The key is free again: the same key now makes a new message, even with new content.
    again = _accept("k-sent", subject="next month")
    assert again != sent
    info = outbox.status(sent)
    assert info is not None and info["state"] == "sent" and info["idempotency_key"] is None
    # A message still in flight keeps its key whatever its age.
    assert _accept("k-pending") == pending


# --- payloads and rows ------------------------------------------------------------------

RETENTION = Retention(payload=dt.timedelta(days=7), rows=dt.timedelta(days=90))
ENDED = ("sent", "failed", "rejected")
IN_FLIGHT = ("queued", "sending", "retrying")
KEPT = ("content_hash", "size_bytes", "rfc822_message_id", "provider_message_id", "state",
        "error_code", "updated_at", "created_at", "attempt_count")


def _message(state: str, *, at: dt.datetime | None = None) -> str:
    """A message in ``state`` through the outbox's own functions; ``at``: when its claim
    and finish happened (default now)."""
    if state == "rejected":
        return outbox.reject({"from": SENDER, "to": ["nope"]},
                             ValidationError("invalid_address", "no @"), request_id=None,
                             actor="t").message_id
    account = outbox.find_account(SENDER)
    assert account is not None
    message = validate({"from": SENDER, "to": ["r@example.org"], "subject": "s", "text": "t"})
    mid = outbox.accept(message, account, request_id=None, actor="t", size_bytes=100).message_id
    if state == "queued":
        return mid
    claim = outbox.claim(mid, worker="w", lease_seconds=60, now=at)
    assert claim is not None
    outcomes = {"sent": Outcome(State.SENT, provider_message_id=f"p-{mid}"),
                "failed": Outcome(State.FAILED, code="provider_rejected"),
                "retrying": Outcome(State.RETRYING, code="provider_unavailable",
                                    next_attempt_at=(at or outbox.utcnow()) + DAY)}
    if state in outcomes:
        assert outbox.finish(claim, outcomes[state], latency_ms=1, now=at)
    return mid


def _one_of_each() -> dict[str, str]:
    return {state: _message(state) for state in ENDED + IN_FLIGHT}


def _row(mid: str) -> Any:
    with get_engine().connect() as conn:
        return conn.execute(select(MESSAGES).where(MESSAGES.c.id == mid)).first()


def _children(mids: list[str]) -> tuple[int, int]:
    """Attempts and audit rows of these messages."""
    with get_engine().connect() as conn:
        attempts = conn.execute(select(func.count()).select_from(ATTEMPTS)
                                .where(ATTEMPTS.c.message_id.in_(mids))).scalar_one()
        audit = conn.execute(select(func.count()).select_from(AUDIT)
                             .where(AUDIT.c.message_id.in_(mids))).scalar_one()
    return int(attempts), int(audit)


def _later(delta: dt.timedelta) -> dt.datetime:
    return outbox.utcnow() + delta


def test_an_ended_message_loses_its_payload_after_the_retention_and_keeps_the_rest(
        backend: str) -> None:
    accounts.add("sink", SENDER)
    ids = _one_of_each()
    before = {state: _row(mid) for state, mid in ids.items()}
    history = {mid: (outbox.status(mid) or {}) for mid in ids.values()}

    assert purge(RETENTION, now=_later(RETENTION.payload - HOUR)) == Removed()  # too young
    assert all(_row(mid).payload is not None for mid in ids.values())

    now = _later(RETENTION.payload + MINUTE)
    assert purge(RETENTION, now=now) == Removed(payloads=3)
    for state in ENDED:
        row = _row(ids[state])
        assert row.payload is None and row.payload_purged_at == now
        assert [getattr(row, c) for c in KEPT] == [getattr(before[state], c) for c in KEPT]
        info = outbox.status(ids[state])
        assert info is not None and info["payload_purged_at"] == row.payload_purged_at.isoformat()
        # Attempts and audit untouched; only the purge's mark is new.
        assert {**info, "payload_purged_at": None} == history[ids[state]]
    for state in IN_FLIGHT:  # whatever their age
        row = _row(ids[state])
        assert row.payload == before[state].payload and row.payload_purged_at is None
    assert (outbox.status(ids["queued"]) or {})["payload_purged_at"] is None
    assert purge(RETENTION, now=now) == Removed()  # done once


def test_ended_messages_their_attempts_and_audit_go_after_the_row_retention(backend: str) -> None:
    accounts.add("sink", SENDER)
    ids = _one_of_each()
    purge(RETENTION, now=_later(RETENTION.payload + MINUTE))  # these lost their payload first
    fresh = {state: _message(state) for state in ENDED}  # these still have theirs
    ended = [ids[s] for s in ENDED] + list(fresh.values())
    attempts, audit = _children(ended)
    assert attempts == 4 and audit > 6  # one attempt per sent or failed message

    assert purge(RETENTION, now=_later(RETENTION.rows - HOUR)).messages == 0
    removed = purge(RETENTION, now=_later(RETENTION.rows + MINUTE))
    assert removed == Removed(messages=6, attempts=attempts, audit=audit)
    assert [_row(mid) for mid in ended] == [None] * 6 and _children(ended) == (0, 0)

    # A message in flight is never deleted, however old.
    assert purge(RETENTION, now=_later(dt.timedelta(days=3650))) == Removed()
    flying = [ids[s] for s in IN_FLIGHT]
    assert all(_row(mid).payload is not None for mid in flying)
    assert _children(flying)[1] >= 3


def test_small_batches_still_take_everything_and_a_budget_stops_between_them(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    accounts.add("sink", SENDER)
    sent = [_message("sent") for _ in range(7)]
    assert purge(RETENTION, now=_later(RETENTION.payload + MINUTE), budget=0) == Removed(
        complete=False)
    # One message per batch by bytes, at most two by count: seven batches, all of them.
    monkeypatch.setattr(retention, "PURGE_BATCH_BYTES", 1)
    assert purge(RETENTION, now=_later(RETENTION.payload + MINUTE), batch=2) == Removed(payloads=7)
    assert purge(RETENTION, now=_later(RETENTION.rows + MINUTE), batch=3).messages == 7
    assert [_row(mid) for mid in sent] == [None] * 7


def test_due_counts_what_a_purge_then_removes(backend: str) -> None:
    accounts.add("sink", SENDER)
    old = [_message("sent", at=outbox.utcnow() - RETENTION.rows - DAY) for _ in range(2)]
    week = [_message(state, at=outbox.utcnow() - RETENTION.payload - DAY)
            for state in ("sent", "failed")]
    _one_of_each()
    attempts, audit = _children(old)
    assert due(RETENTION) == Due(payloads=2, messages=2)
    assert purge(RETENTION) == Removed(payloads=2, messages=2, attempts=attempts, audit=audit)
    assert due(RETENTION) == Due(payloads=0, messages=0)
    assert all(_row(mid).payload is None for mid in week)


def test_a_message_whose_payload_is_gone_is_refused_a_replay(backend: str) -> None:
    accounts.add("sink", SENDER)
    gone = _message("failed", at=outbox.utcnow() - RETENTION.payload - DAY)
    kept = _message("failed")
    assert purge(RETENTION).payloads == 1
    by_id = {c.id: c for c in replay.select_for_replay([gone, kept])}
    assert (by_id[gone].replay, by_id[gone].refusal) == (False, replay.PAYLOAD_PURGED)
    assert "payload_purged" in by_id[gone].verdict
    assert (by_id[kept].replay, by_id[kept].refusal) == (True, None)
    # Chosen by filter it is listed, and refused, all the same.
    assert {c.id: c.refusal for c in replay.select_for_replay(code="provider_rejected")} == {
        gone: replay.PAYLOAD_PURGED, kept: None}
    # The transition itself refuses it too (a purge that won a race with a replay's plan).
    assert not oncall.replay(gone, operator="o", reason="r")
    assert (outbox.status(gone) or {})["state"] == "failed"
    assert oncall.replay(kept, operator="o", reason="r")


def test_the_walks_use_their_partial_indexes(backend: str) -> None:
    """Each query the job runs is served by its partial index, so a large outbox is never
    scanned: PostgreSQL's EXPLAIN with sequential scans priced out (on a table this small
    the planner would rightly pick one), SQLite's EXPLAIN QUERY PLAN."""
    from sqlalchemy.dialects import postgresql, sqlite

    accounts.add("sink", SENDER)
    _one_of_each()
    cutoff = outbox.utcnow()
    walks = {"ix_messages_payload_purged": (retention._PURGED, retention._ENDED),
             "ix_messages_payload_kept": (retention._KEPT,)}
    for index, where in walks.items():
        query = (select(MESSAGES.c.id, MESSAGES.c.size_bytes)
                 .where(*where, MESSAGES.c.updated_at < cutoff).order_by(MESSAGES.c.updated_at)
                 .limit(500).with_for_update(skip_locked=True))
        dialect = postgresql.dialect() if backend == "postgresql" else sqlite.dialect()
        sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        with get_engine().begin() as conn:
            if backend == "postgresql":
                conn.execute(text("SET LOCAL enable_seqscan = off"))
                plan = "\n".join(conn.execute(text(f"EXPLAIN {sql}")).scalars())
            else:
                plan = "\n".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        assert index in plan and "Seq Scan" not in plan and "SCAN messages" not in plan, plan


def _footprint() -> tuple[int, int, int, int]:
    """Rows of messages, attempts and audit, and the payloads' bytes: what the job bounds.
    (Not pg_total_relation_size: the files shrink only when VACUUM hands space back.)"""
    with get_engine().connect() as conn:
        return tuple(int(conn.execute(text(sql)).scalar_one()) for sql in (  # type: ignore[return-value]
            "SELECT count(*) FROM messages", "SELECT count(*) FROM attempts",
            "SELECT count(*) FROM audit",
            "SELECT coalesce(sum(octet_length(payload)), 0) FROM messages"))


def test_the_outbox_stays_the_same_size_under_steady_traffic(clean_db: None) -> None:
    """Ten days of traffic on PostgreSQL, one day per round: a day's messages end, then
    the job runs, as beat would. Once the first messages pass the row retention the outbox
    holds the same rows and payload bytes after every round, however many rounds run."""
    accounts.add("sink", SENDER)
    policy = Retention(payload=2 * DAY, rows=4 * DAY)
    start, per_day = outbox.utcnow(), 20
    figures = []
    for day in range(10):
        today = start + day * DAY
        for n in range(per_day):
            _message("failed" if n % 5 == 0 else "sent", at=today)
        purge(policy, now=today + HOUR, batch=7)
        figures.append(_footprint())
    steady = figures[4:]  # from the day the first messages are past the row retention
    assert len(set(steady)) == 1, figures
    messages, attempts, audit, payload_bytes = steady[0]
    # Kept: the days that ended under 4 days before the run (today and the 3 before), with
    # payloads for the 2 under 2 days.
    assert (messages, attempts) == (4 * per_day, 4 * per_day)
    assert payload_bytes == 2 * figures[0][3] and audit > messages
    assert all(f <= s for early in figures[:4] for f, s in zip(early, steady[0], strict=True))
