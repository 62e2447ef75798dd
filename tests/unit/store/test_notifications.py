"""Outcome notifications in the outbox: written with the final state, on both backends,
with the same kwargs; taken by one reconciler at a time; never lost to retention."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select, update

from mailrelay import intake
from mailrelay.auth import accounts
from mailrelay.store import notifications, oncall, outbox, retention
from mailrelay.store.db import get_engine
from mailrelay.store.models import MESSAGES, NOTIFICATIONS
from mailrelay.store.outbox import AccountRef, Outcome
from mailrelay.store.states import State

SENDER = "sender@example.com"
NOTIFY = {"task": "billing.mail_outcome", "queue": "billing.events"}
KEYS = ["id", "state", "error_code", "provider", "provider_message_id", "rfc822_message_id",
        "attempts", "metadata", "replays", "request_id"]


def _account() -> AccountRef:
    accounts.add("sink", SENDER)
    found = outbox.find_account(SENDER)
    assert found is not None
    return found


def _take_in(request_id: str | None = None, **extra: Any) -> outbox.IntakeResult:
    raw = {"from": SENDER, "to": ["ada@example.org"], "subject": "private subject",
           "text": "private body", **extra}
    return intake.take_in(raw, request_id=request_id, actor="test").result


def _finish(mid: str, outcome: Outcome) -> outbox.Finished:
    claim = outbox.claim(mid, worker="w", lease_seconds=60)
    assert claim is not None
    return outbox.finish(claim, outcome, latency_ms=1)


def _rows(mid: str) -> list[Any]:
    with get_engine().connect() as conn:
        return list(conn.execute(select(NOTIFICATIONS).where(NOTIFICATIONS.c.message_id == mid)
                                 .order_by(NOTIFICATIONS.c.replays)))


def test_a_final_state_writes_its_notification_with_ids_codes_and_metadata(backend: str) -> None:
    _account()
    sent = _take_in("req-1", notify=NOTIFY, metadata={"invoice": 42, "tags": ["a", "b"]}).message_id
    failed = _take_in(notify=NOTIFY, metadata={"invoice": 43}).message_id

    retried = _finish(sent, Outcome(State.RETRYING, code="rate_limited",
                                    next_attempt_at=dt.datetime.now(dt.UTC)))
    assert retried and retried.notification is None  # not final: nothing to tell yet
    done = _finish(sent, Outcome(State.SENT, provider_message_id="p-1"))
    gave_up = _finish(failed, Outcome(State.FAILED, code="invalid_recipient", detail="no"))

    assert done.notification is not None and gave_up.notification is not None
    assert done.notification.task == "billing.mail_outcome"
    assert done.notification.queue == "billing.events"
    kwargs = done.notification.kwargs
    assert list(kwargs) == KEYS
    row = outbox.status(sent)
    assert row is not None
    assert kwargs == {"id": sent, "state": "sent", "error_code": None, "provider": "sink",
                      "provider_message_id": "p-1",
                      "rfc822_message_id": row["message_id_header"], "attempts": 2,
                      "metadata": {"invoice": 42, "tags": ["a", "b"]}, "replays": 0,
                      "request_id": "req-1"}
    assert gave_up.notification.kwargs["state"] == "failed"
    assert gave_up.notification.kwargs["error_code"] == "invalid_recipient"
    assert gave_up.notification.kwargs["metadata"] == {"invoice": 43}
    # What is stored is what the worker got back.
    stored = _rows(sent)
    assert len(stored) == 1 and stored[0].state == "pending" and stored[0].outcome == "sent"
    assert json.loads(stored[0].kwargs) == kwargs
    # Never an address, a subject or a body.
    text = json.dumps([dict(r._mapping) for r in _rows(sent) + _rows(failed)], default=str)
    for private in ("ada@example.org", SENDER, "private subject", "private body"):
        assert private not in text
    assert row["notify"] == NOTIFY
    assert [n["state"] for n in row["notifications"]] == ["pending"]


def test_without_notify_nothing_is_written(backend: str) -> None:
    _account()
    mid = _take_in().message_id
    done = _finish(mid, Outcome(State.SENT, provider_message_id="p"))
    assert done and done.notification is None
    assert _rows(mid) == []
    status = outbox.status(mid)
    assert status is not None and status["notify"] is None and status["notifications"] == []


def test_the_configured_default_applies_to_messages_without_notify(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrelay.config import get_settings

    _account()
    monkeypatch.setenv("MAILRELAY_NOTIFY_TASK", "ops.outcome")
    monkeypatch.setenv("MAILRELAY_NOTIFY_QUEUE", "ops.events")
    get_settings.cache_clear()
    try:
        default = _take_in().message_id
        own = _take_in(notify=NOTIFY).message_id
    finally:
        monkeypatch.delenv("MAILRELAY_NOTIFY_TASK")
        monkeypatch.delenv("MAILRELAY_NOTIFY_QUEUE")
        get_settings.cache_clear()
    assert _finish(default, Outcome(State.SENT, provider_message_id="p")).notification is not None
    assert [(r.task, r.queue) for r in _rows(default)] == [("ops.outcome", "ops.events")]
    assert _finish(own, Outcome(State.SENT, provider_message_id="q")).notification is not None
    assert [(r.task, r.queue) for r in _rows(own)] == [("billing.mail_outcome", "billing.events")]


def test_a_rejection_that_named_notify_is_told_and_a_bad_notify_is_rejected(backend: str) -> None:
    _account()
    rejected = _take_in(notify=NOTIFY, metadata={"k": 1}, to=[])
    assert rejected.state == "rejected" and rejected.error_code == "missing_recipient"
    assert rejected.notification is not None
    assert rejected.notification.kwargs == {
        "id": rejected.message_id, "state": "rejected", "error_code": "missing_recipient",
        "provider": None, "provider_message_id": None, "rfc822_message_id": None,
        "attempts": 0, "metadata": {"k": 1}, "replays": 0, "request_id": None}
    assert len(_rows(rejected.message_id)) == 1

    for bad in ({"task": "billing.mail_outcome"}, {"task": "x", "queue": "amq.direct"},
                {"task": "mailrelay.send", "queue": "q"}, {"task": "x y", "queue": "q"},
                {"task": "t", "queue": "mailrelay.intake"}, "billing.events",
                {"task": "t", "queue": "unacked_mutex"}, {"task": "t", "queue": "w1.pidbox"},
                {"task": "t", "queue": "celeryev.abc"}, {"task": "t", "queue": "_kombu.binding.x"},
                {"task": "t", "queue": "q", "extra": 1}, {"task": "t", "queue": "q" * 201}):
        refused = _take_in(notify=bad)
        assert (refused.state, refused.error_code) == ("rejected", "invalid_message"), bad
        # Nowhere valid to tell, and no default: nobody is told.
        assert refused.notification is None
    unnamed = _take_in(to=[])
    assert unnamed.state == "rejected" and unnamed.notification is None


def test_each_replay_ends_in_one_more_notification(backend: str) -> None:
    _account()
    mid = _take_in(notify=NOTIFY).message_id
    _finish(mid, Outcome(State.FAILED, code="provider_rejected"))
    assert oncall.replay(mid, operator="op", reason="test")
    again = _finish(mid, Outcome(State.SENT, provider_message_id="p"))
    assert again.notification is not None and again.notification.kwargs["replays"] == 1
    assert [(r.replays, r.outcome) for r in _rows(mid)] == [(0, "failed"), (1, "sent")]


def test_a_lost_lease_writes_no_notification(backend: str) -> None:
    _account()
    mid = _take_in(notify=NOTIFY).message_id
    first = outbox.claim(mid, worker="a", lease_seconds=60)
    assert first is not None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    second = outbox.claim(mid, worker="b", lease_seconds=60, now=later)
    assert second is not None
    lost = outbox.finish(first, Outcome(State.SENT, provider_message_id="late"), latency_ms=1)
    assert not lost and lost.notification is None
    assert _rows(mid) == []


def test_due_ones_are_taken_once_and_published_ones_leave_the_list(backend: str) -> None:
    _account()
    ids = [_take_in(notify=NOTIFY).message_id for _ in range(3)]
    pending = [_finish(mid, Outcome(State.SENT, provider_message_id=f"p{n}")).notification
               for n, mid in enumerate(ids)]
    assert all(pending)
    # Not due yet: the worker that wrote them publishes them itself.
    assert notifications.take_due(limit=10, hold=30) == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
    taken = notifications.take_due(limit=10, hold=30, now=later)
    assert sorted(p.message_id for p in taken) == sorted(ids)
    # A second reconciler at the same moment finds them put off.
    assert notifications.take_due(limit=10, hold=30, now=later) == []
    assert notifications.mark_published([taken[0].id]) == 1
    assert notifications.mark_published([taken[0].id]) == 0
    listed = notifications.pending()
    assert len(listed) == 2 and {"message_id", "outcome", "age_seconds"} <= set(listed[0])
    assert "kwargs" not in listed[0] and "metadata" not in listed[0]
    notifications.mark_failed(taken[1].id, "queue_not_found", retry_after=30)
    failed = [row for row in notifications.pending() if row["notification_id"] == taken[1].id]
    assert failed[0]["tries"] == 1 and failed[0]["last_error"] == "queue_not_found"
    assert notifications.make_due() == 2
    assert len(notifications.take_due(limit=10, hold=30)) == 2


def test_retention_keeps_a_message_until_its_outcome_is_published(backend: str) -> None:
    _account()
    told, untold = (_take_in(notify=NOTIFY).message_id for _ in range(2))
    published = _finish(told, Outcome(State.SENT, provider_message_id="p")).notification
    _finish(untold, Outcome(State.SENT, provider_message_id="q"))
    assert published is not None
    notifications.mark_published([published.id])
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)
    with get_engine().begin() as conn:
        conn.execute(update(MESSAGES).values(updated_at=long_ago))
    keep = retention.Retention(payload=dt.timedelta(days=7), rows=dt.timedelta(days=90))
    assert retention.due(keep).messages == 1
    removed = retention.purge(keep)
    assert (removed.messages, removed.notifications) == (1, 1)
    assert outbox.status(told) is None
    assert outbox.status(untold) is not None and len(_rows(untold)) == 1


def test_every_way_intake_refuses_tells_where_the_request_asked(backend: str) -> None:
    _account()
    call = intake.reject_call("mailrelay.send takes one argument", request_id="r-call",
                              actor="t", raw={"notify": NOTIFY, "metadata": {"m": 1}})
    overtime = intake.reject_overtime({"from": SENDER, "notify": NOTIFY}, request_id="r-slow",
                                      actor="t")
    first = _take_in(idempotency_key="k", notify=NOTIFY)
    conflict = _take_in(idempotency_key="k", notify=NOTIFY, subject="other content")
    bare = intake.reject_call("no message", request_id="r-none", actor="t")
    assert conflict.error_code == "idempotency_conflict" and first.state == "queued"
    for result, code in ((call, "invalid_message"), (overtime, "intake_timeout"),
                         (conflict, "idempotency_conflict")):
        assert result.notification is not None, code
        assert result.notification.kwargs["error_code"] == code
        assert result.notification.kwargs["state"] == "rejected"
    assert call.notification is not None and call.notification.kwargs["metadata"] == {"m": 1}
    assert call.notification.kwargs["request_id"] == "r-call"
    assert bare.notification is None and first.notification is None


def test_two_reconcilers_at_once_never_take_the_same_notification(backend: str) -> None:
    import threading

    _account()
    for _ in range(40):
        _finish(_take_in(notify=NOTIFY).message_id, Outcome(State.SENT, provider_message_id="p"))
    notifications.make_due()
    taken: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def reconciler(n: int) -> None:
        start.wait()
        while batch := notifications.take_due(limit=3, hold=60):
            taken[n].extend(p.id for p in batch)

    threads = [threading.Thread(target=reconciler, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not set(taken[0]) & set(taken[1])
    assert len(taken[0]) + len(taken[1]) == 40


def test_drop_gives_up_one_queue_audited_and_lets_retention_go_on(backend: str) -> None:
    from mailrelay.store.models import AUDIT

    _account()
    typo = {"task": "billing.mail_outcome", "queue": "billing.evnets"}
    lost = _take_in(notify=typo).message_id
    kept = _take_in(notify=NOTIFY).message_id
    for mid in (lost, kept):
        _finish(mid, Outcome(State.SENT, provider_message_id="p"))
    assert notifications.count_pending(queue="billing.evnets") == 1
    assert notifications.drop("billing.evnets", operator="oncall-ada", reason="typo") == 1
    assert notifications.count_pending() == 1
    status = outbox.status(lost)
    assert status is not None and status["notifications"][0]["state"] == "dropped"
    with get_engine().connect() as conn:
        audit = conn.execute(select(AUDIT.c.actor, AUDIT.c.reason)
                             .where(AUDIT.c.message_id == lost,
                                    AUDIT.c.action == "notify_dropped")).all()
    assert [tuple(row) for row in audit] == [("oncall-ada", "typo")]
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)
    with get_engine().begin() as conn:
        conn.execute(update(MESSAGES).values(updated_at=long_ago))
    keep = retention.Retention(payload=dt.timedelta(days=7), rows=dt.timedelta(days=90))
    assert retention.purge(keep).messages == 1
    assert outbox.status(lost) is None and outbox.status(kept) is not None
