from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import select

from mailrelay.auth import accounts
from mailrelay.errors import IllegalTransition, ValidationError
from mailrelay.message import validate
from mailrelay.store import outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import Attempt, AuditEntry
from mailrelay.store.outbox import AccountRef, Outcome
from mailrelay.store.states import State

SENDER = "sender@example.com"


def _account() -> AccountRef:
    accounts.add("sink", SENDER)
    found = outbox.find_account(SENDER)
    assert found is not None
    return found


def _message(**extra: Any) -> dict[str, Any]:
    return {"from": SENDER, "to": ["rcpt@example.org"], "subject": "s", "text": "body", **extra}


def _queued(account: AccountRef, **extra: Any) -> str:
    return outbox.accept(validate(_message(**extra)), account, request_id=None, actor="t",
                         size_bytes=10).message_id


def _history(message_id: str) -> list[tuple[str | None, str | None]]:
    audit = AuditEntry.__table__
    with get_engine().connect() as conn:
        rows = conn.execute(select(audit.c.from_state, audit.c.to_state)
                            .where(audit.c.message_id == message_id, audit.c.to_state.is_not(None))
                            .order_by(audit.c.id)).all()
    return [(r[0], r[1]) for r in rows]


def _attempts(message_id: str) -> list[Any]:
    table = Attempt.__table__
    with get_engine().connect() as conn:
        return list(conn.execute(select(table).where(table.c.message_id == message_id)
                                 .order_by(table.c.number)).all())


def test_accept_queues_with_a_message_id_and_audit(backend: str) -> None:
    account = _account()
    result = outbox.accept(validate(_message()), account, request_id="r1", actor="t", size_bytes=10)
    assert result.state == "queued" and result.created
    info = outbox.status(result.message_id)
    assert info is not None
    assert info["message_id_header"].endswith("@example.com>")
    assert info["provider"] == "sink" and info["attempts"] == []
    assert _history(result.message_id) == [(None, "queued")]


def test_a_repeated_request_id_returns_the_first_row(backend: str) -> None:
    account = _account()
    first = outbox.accept(validate(_message()), account, request_id="r1", actor="t", size_bytes=1)
    again = outbox.accept(validate(_message()), account, request_id="r1", actor="t", size_bytes=1)
    assert again.message_id == first.message_id and not again.created


def test_idempotency_key_same_content_same_message_other_content_conflict(backend: str) -> None:
    account = _account()
    first = outbox.accept(validate(_message(idempotency_key="k1")), account, request_id=None,
                          actor="t", size_bytes=1)
    again = outbox.accept(validate(_message(idempotency_key="k1", metadata={"try": 2})), account,
                          request_id=None, actor="t", size_bytes=1)
    assert again.message_id == first.message_id and not again.created
    with pytest.raises(ValidationError) as err:
        outbox.accept(validate(_message(idempotency_key="k1", subject="other")), account,
                      request_id=None, actor="t", size_bytes=1)
    assert err.value.code == "idempotency_conflict"


def test_twin_intakes_racing_on_one_request_store_one_message(backend: str) -> None:
    """A redelivered request taken in twice at the same moment: one insert wins, the
    other fails on the unique request id and its second pass returns the winner's row."""
    account = _account()
    message = validate(_message(idempotency_key="k-twin"))
    results: list[outbox.IntakeResult] = []
    start = threading.Barrier(8)

    def take() -> None:
        start.wait()
        results.append(outbox.accept(message, account, request_id="twin", actor="t", size_bytes=1))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len({r.message_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert _history(results[0].message_id) == [(None, "queued")]


def test_a_refused_route_stores_nothing_unless_the_request_was_stored_before(backend: str) -> None:
    account = _account()
    refusal = ValidationError("rollout_gated", "gated")
    with pytest.raises(ValidationError):
        outbox.accept(validate(_message()), account, request_id="r-gated", actor="t", size_bytes=1,
                      refuse=refusal)
    assert outbox.earlier_request("r-gated") is None
    first = outbox.accept(validate(_message()), account, request_id="r-open", actor="t", size_bytes=1)
    again = outbox.accept(validate(_message()), account, request_id="r-open", actor="t", size_bytes=1,
                          refuse=refusal)
    assert again.message_id == first.message_id and not again.created


def test_reject_is_stored_once_per_request(backend: str) -> None:
    err = ValidationError("invalid_address", "bad", field="to[0]")
    first = outbox.reject({"to": ["x"]}, err, request_id="r9", actor="t")
    again = outbox.reject({"to": ["x"]}, err, request_id="r9", actor="t")
    assert first.message_id == again.message_id and first.state == "rejected"
    info = outbox.status(first.message_id)
    assert info is not None and info["error_code"] == "invalid_address"
    assert _history(first.message_id) == [(None, "rejected")]


def test_claim_then_sent(backend: str) -> None:
    mid = _queued(_account())
    claim = outbox.claim(mid, worker="w1", lease_seconds=60)
    assert claim is not None and claim.attempt_number == 1 and not claim.verify
    assert outbox.claim(mid, worker="w2", lease_seconds=60) is None  # leased
    assert outbox.finish(claim, Outcome(State.SENT, provider_message_id="p1"), latency_ms=5)
    info = outbox.status(mid)
    assert info is not None
    assert info["state"] == "sent" and info["provider_message_id"] == "p1"
    assert [a["outcome"] for a in info["attempts"]] == ["sent"]
    assert _history(mid) == [(None, "queued"), ("queued", "sending"), ("sending", "sent")]
    assert outbox.claim(mid, worker="w3", lease_seconds=60) is None  # final


def test_retrying_waits_for_its_time_then_fails(backend: str) -> None:
    mid = _queued(_account())
    now = outbox.utcnow()
    claim = outbox.claim(mid, worker="w1", lease_seconds=60, now=now)
    assert claim is not None
    later = now + dt.timedelta(seconds=30)
    outbox.finish(claim, Outcome(State.RETRYING, code="rate_limited", next_attempt_at=later), latency_ms=1)
    assert outbox.claim(mid, worker="w1", lease_seconds=60, now=now + dt.timedelta(seconds=29)) is None
    second = outbox.claim(mid, worker="w1", lease_seconds=60, now=later)
    assert second is not None and second.attempt_number == 2
    outbox.finish(second, Outcome(State.FAILED, code="invalid_recipient", detail="no"), latency_ms=1)
    info = outbox.status(mid)
    assert info is not None and info["state"] == "failed" and info["error_code"] == "invalid_recipient"
    assert [a["outcome"] for a in info["attempts"]] == ["retry", "failed"]
    assert _history(mid)[1:] == [("queued", "sending"), ("sending", "retrying"),
                                 ("retrying", "sending"), ("sending", "failed")]


def test_expired_lease_is_taken_over_with_verification(backend: str) -> None:
    mid = _queued(_account())
    now = outbox.utcnow()
    first = outbox.claim(mid, worker="w1", lease_seconds=60, now=now)
    assert first is not None
    second = outbox.claim(mid, worker="w2", lease_seconds=60, now=now + dt.timedelta(seconds=61))
    assert second is not None and second.verify and second.attempt_number == 2
    tries = _attempts(mid)
    assert [t.outcome for t in tries] == ["unknown", None]
    # The first worker comes back late: its finish must not move the message.
    assert not outbox.finish(first, Outcome(State.SENT, provider_message_id="late"), latency_ms=1)
    assert outbox.finish(second, Outcome(State.SENT, provider_message_id="p2"), latency_ms=1)
    info = outbox.status(mid)
    assert info is not None and info["provider_message_id"] == "p2"
    assert any(h["action"] == "lease_lost" for h in info["history"])


def test_only_one_of_many_concurrent_claims_wins(backend: str) -> None:
    mid = _queued(_account())
    results: list[object] = []
    barrier = threading.Barrier(8)

    def contend(n: int) -> None:
        barrier.wait()
        results.append(outbox.claim(mid, worker=f"w{n}", lease_seconds=60))

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    assert len(_attempts(mid)) == 1


def test_finish_refuses_a_state_it_cannot_reach(backend: str) -> None:
    mid = _queued(_account())
    claim = outbox.claim(mid, worker="w1", lease_seconds=60)
    assert claim is not None
    with pytest.raises(IllegalTransition):
        outbox.finish(claim, Outcome(State.QUEUED), latency_ms=1)
    with pytest.raises(IllegalTransition):
        outbox.finish(claim, Outcome(State.REJECTED), latency_ms=1)


def _health() -> dict[str, Any]:
    return accounts.health(SENDER)


def test_attempts_keep_the_account_health(backend: str) -> None:
    account = _account()
    now = outbox.utcnow()
    first, second = _queued(account), _queued(account, subject="two")
    for mid, code in ((first, "rate_limited"), (second, "permission_denied")):
        claim = outbox.claim(mid, worker="w", lease_seconds=60, now=now)
        assert claim is not None
        outbox.finish(claim, Outcome(State.RETRYING, code=code, detail=f"{code} detail",
                                     next_attempt_at=now), latency_ms=1, now=now)
    health = _health()
    assert (health["consecutive_failures"], health["last_error_code"],
            health["last_error_detail"]) == (2, "permission_denied", "permission_denied detail")
    assert health["last_success_at"] is None and health["last_failure_at"] is not None
    claim = outbox.claim(first, worker="w", lease_seconds=60, now=now)
    assert claim is not None
    outbox.finish(claim, Outcome(State.SENT, provider_message_id="p"), latency_ms=1, now=now)
    health = _health()
    assert health["consecutive_failures"] == 0
    assert health["last_success_at"] == now.isoformat()
    # Within a few seconds another success does not rewrite the row (no hot-row writes).
    claim = outbox.claim(second, worker="w", lease_seconds=60, now=now)
    assert claim is not None
    soon = now + dt.timedelta(seconds=1)
    outbox.finish(claim, Outcome(State.SENT, provider_message_id="q"), latency_ms=1, now=soon)
    assert _health()["last_success_at"] == now.isoformat()
    third = _queued(account, subject="three")
    claim = outbox.claim(third, worker="w", lease_seconds=60, now=now)
    assert claim is not None
    later = now + dt.timedelta(seconds=60)
    outbox.finish(claim, Outcome(State.SENT, provider_message_id="r"), latency_ms=1, now=later)
    assert _health()["last_success_at"] == later.isoformat()


def test_a_lost_lease_leaves_the_health_alone(backend: str) -> None:
    mid = _queued(_account())
    claim = outbox.claim(mid, worker="w1", lease_seconds=60)
    assert claim is not None
    stolen = dataclasses.replace(claim, owner="someone-else")
    assert not outbox.finish(stolen, Outcome(State.FAILED, code="invalid_recipient"), latency_ms=1)
    assert _health()["consecutive_failures"] == 0


def test_the_postgresql_fast_path_survives_a_dropped_connection(clean_db: None) -> None:
    """A connection the server dropped is a retryable error once, then replaced and
    prepared again; a database that refuses connections is the same retryable error."""
    import os

    from sqlalchemy import text

    from mailrelay.config import get_settings
    from mailrelay.errors import TransientInfraError
    from mailrelay.store.db import get_autocommit_engine

    account = _account()
    first, second, third = (_queued(account) for _ in range(3))
    get_autocommit_engine().dispose()  # so that the pool holds the one connection dropped below
    assert outbox.claim(first, worker="w", lease_seconds=60) is not None
    raw = get_autocommit_engine().raw_connection()
    backend_pid = raw.dbapi_connection.get_backend_pid()  # type: ignore[union-attr]
    raw.close()
    with get_engine().begin() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend_pid}).scalar()

    with pytest.raises(TransientInfraError) as err:
        outbox.claim(second, worker="w", lease_seconds=60)
    assert err.value.code == "database_unavailable"
    claimed = outbox.claim(second, worker="w", lease_seconds=60)
    assert claimed is not None and claimed.attempt_number == 1
    assert outbox.finish(claimed, Outcome(State.SENT, provider_message_id="p"), latency_ms=1)

    saved = os.environ["MAILRELAY_DATABASE_URL"]
    os.environ["MAILRELAY_DATABASE_URL"] = saved.replace(":5432/", ":1/")
    get_settings.cache_clear()
    try:
        with pytest.raises(TransientInfraError) as refused:
            outbox.claim(third, worker="w", lease_seconds=60)
        assert refused.value.code == "database_unavailable"
    finally:
        os.environ["MAILRELAY_DATABASE_URL"] = saved
        get_settings.cache_clear()
    assert (outbox.status(third) or {})["state"] == "queued"
    assert outbox.claim(third, worker="w", lease_seconds=60) is not None
