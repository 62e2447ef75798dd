"""The outbox's side of issue 12's guarantees: a late send's id is kept, takeovers are
counted, leases are renewed only by their owner, and the reconciler re-checks what it marks."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update

from mailrelay import reconcile as reconciler
from mailrelay.auth import accounts
from mailrelay.message import validate
from mailrelay.store import outbox, stranded
from mailrelay.store.db import get_engine
from mailrelay.store.models import AUDIT, MESSAGES
from mailrelay.store.outbox import AccountRef, Outcome
from mailrelay.store.states import State

SENDER = "sender@example.com"


def _account() -> AccountRef:
    accounts.add("sink", SENDER)
    found = outbox.find_account(SENDER)
    assert found is not None
    return found


def _queued(account: AccountRef) -> str:
    message = validate({"from": SENDER, "to": ["rcpt@example.org"], "text": "body"})
    return outbox.accept(message, account, request_id=None, actor="t", size_bytes=10).message_id


def _row(message_id: str) -> dict[str, object]:
    with get_engine().connect() as conn:
        return dict(conn.execute(select(MESSAGES).where(MESSAGES.c.id == message_id)).mappings().one())


def test_a_send_that_ends_after_its_lease_was_lost_leaves_its_id_for_the_new_owner(
        backend: str) -> None:
    mid = _queued(_account())
    now = outbox.utcnow()
    first = outbox.claim(mid, worker="a", lease_seconds=10, now=now)
    second = outbox.claim(mid, worker="b", lease_seconds=10, now=now + dt.timedelta(seconds=11))
    assert first is not None and second is not None
    assert second.took_over and second.takeovers == 1 and second.verify
    # The first worker's send went out after all, but too late to own the message.
    late = Outcome(State.SENT, provider_message_id="p-late")
    assert not outbox.finish(first, late, latency_ms=1, now=now + dt.timedelta(seconds=12))
    assert _row(mid)["provider_message_id"] == "p-late" and _row(mid)["state"] == "sending"
    # The owner's next renewal sees it: it must not send.
    renewal = outbox.renew(second, lease_seconds=10)
    assert renewal is not None and renewal.recorded_provider_id == "p-late"
    # And a later claim knows it before anything is asked of the provider.
    assert outbox.finish(second, Outcome(State.RETRYING, code="internal_error", verify=True,
                                         next_attempt_at=now + dt.timedelta(seconds=12)),
                         latency_ms=1, now=now + dt.timedelta(seconds=12))
    third = outbox.claim(mid, worker="c", lease_seconds=10, now=now + dt.timedelta(seconds=13))
    assert third is not None and third.recorded_provider_id == "p-late" and not third.took_over


def test_only_the_owner_renews_a_lease(backend: str) -> None:
    mid = _queued(_account())
    now = outbox.utcnow()
    first = outbox.claim(mid, worker="a", lease_seconds=10, now=now)
    assert first is not None
    renewed = outbox.renew(first, lease_seconds=60)
    assert renewed is not None and renewed.recorded_provider_id is None
    expires = _row(mid)["lease_expires_at"]
    assert isinstance(expires, dt.datetime) and expires > now + dt.timedelta(seconds=30)
    taken = outbox.claim(mid, worker="b", lease_seconds=10, now=expires + dt.timedelta(seconds=1))
    assert taken is not None
    assert outbox.renew(first, lease_seconds=60) is None  # taken over: the old owner stops


def test_takeovers_are_counted_and_remember_when_the_lost_attempt_ended(backend: str) -> None:
    mid = _queued(_account())
    now = outbox.utcnow()
    claim = outbox.claim(mid, worker="w0", lease_seconds=10, now=now)
    assert claim is not None and not claim.took_over and claim.takeovers == 0
    for n in (1, 2, 3):
        lost_lease_end = claim.lease_expires_at
        claim = outbox.claim(mid, worker=f"w{n}", lease_seconds=10,
                             now=lost_lease_end + dt.timedelta(seconds=1))
        assert claim is not None and claim.took_over and claim.takeovers == n
        # The dead worker's request may have left until its lease ended, no later.
        assert claim.verify_since == lost_lease_end


def test_the_reconciler_leaves_alone_what_ended_after_it_was_found(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mid = _queued(_account())
    later = outbox.utcnow() + dt.timedelta(hours=1)
    real_find = stranded.find

    def find_then_fail(**kwargs: object) -> tuple[dt.datetime, list[stranded.Found]]:
        found = real_find(**kwargs)  # type: ignore[arg-type]
        claim = outbox.claim(mid, worker="w", lease_seconds=10)  # meanwhile: claimed, failed
        assert claim is not None
        outbox.finish(claim, Outcome(State.FAILED, code="invalid_recipient"), latency_ms=1)
        return found

    monkeypatch.setattr(stranded, "find", find_then_fail)
    failed_at = None
    enqueued: list[str] = []
    assert reconciler.reconcile(lambda m, p: enqueued.append(m), now=later) == 0
    failed_at = _row(mid)["updated_at"]
    assert enqueued == [] and _row(mid)["state"] == "failed"
    with get_engine().connect() as conn:
        actions = conn.execute(select(AUDIT.c.action).where(AUDIT.c.message_id == mid)).scalars().all()
    assert "reconcile" not in actions
    assert _row(mid)["updated_at"] == failed_at  # still its failure time


def test_the_reconciler_keeps_going_until_the_backlog_is_done(backend: str) -> None:
    account = _account()
    ids = {_queued(account) for _ in range(23)}
    enqueued: list[str] = []
    later = outbox.utcnow() + dt.timedelta(hours=1)
    assert reconciler.reconcile(lambda m, p: enqueued.append(m), now=later, limit=5) == 23
    assert set(enqueued) == ids and len(enqueued) == 23


def test_a_skewed_worker_clock_takes_over_no_live_lease(monkeypatch: pytest.MonkeyPatch,
                                                        clean_db: None) -> None:
    """On PostgreSQL leases, due times and the reconciler run on the database's clock: a
    host ten minutes ahead neither takes over a live lease nor finds it stranded."""
    mid = _queued(_account())
    live = outbox.claim(mid, worker="honest", lease_seconds=30)
    assert live is not None
    real = outbox.utcnow
    monkeypatch.setattr(outbox, "utcnow", lambda: real() + dt.timedelta(minutes=10))
    assert outbox.claim(mid, worker="skewed", lease_seconds=30) is None
    assert reconciler.reconcile(lambda m, p: None) == 0
    # A retry measured by the skewed clock is due when the database's clock says so.
    ended = outbox.utcnow()
    assert outbox.finish(live, Outcome(State.RETRYING, code="network_error", ended_at=ended,
                                       next_attempt_at=ended + dt.timedelta(seconds=60), wait=60),
                         latency_ms=1)
    due = _row(mid)["next_attempt_at"]
    assert isinstance(due, dt.datetime)
    assert dt.timedelta(seconds=50) < due - real() < dt.timedelta(seconds=70)



def test_a_lease_renewal_extends_on_the_database_clock(clean_db: None) -> None:
    mid = _queued(_account())
    claim = outbox.claim(mid, worker="w", lease_seconds=10)
    assert claim is not None and claim.db_now is not None
    assert abs(claim.lease_seconds_left - 10) < 1
    with get_engine().begin() as conn:  # as if most of the lease had passed
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == mid)
                     .values(lease_expires_at=claim.lease_expires_at - dt.timedelta(seconds=8)))
    assert outbox.renew(claim, lease_seconds=10) is not None
    expires = _row(mid)["lease_expires_at"]
    assert isinstance(expires, dt.datetime)
    assert expires >= claim.lease_expires_at - dt.timedelta(seconds=1)
