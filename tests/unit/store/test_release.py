"""outbox.release: a send the rate limit held back leaves no attempt behind, on both backends."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from mailrelay.auth import accounts
from mailrelay.message import validate
from mailrelay.store import outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import MESSAGES
from mailrelay.store.outbox import Outcome
from mailrelay.store.states import State

SENDER = "sender@example.com"


def _queued() -> str:
    accounts.add("sink", SENDER)
    ref = outbox.find_account(SENDER)
    assert ref is not None
    return outbox.accept(validate({"from": SENDER, "to": ["r@example.org"], "text": "t"}), ref,
                         request_id=None, actor="t", size_bytes=1).message_id


def _row(message_id: str) -> dict[str, object]:
    with get_engine().connect() as conn:
        return dict(conn.execute(select(MESSAGES).where(MESSAGES.c.id == message_id)).one()._mapping)


def test_a_released_claim_leaves_no_attempt_and_comes_back_at_its_turn(backend: str) -> None:
    mid = _queued()
    now = outbox.utcnow()
    claim = outbox.claim(mid, worker="w1", lease_seconds=60, now=now)
    assert claim is not None and claim.attempt_number == 1
    until = now + dt.timedelta(seconds=5)
    assert outbox.release(claim, until=until, reason="mailbox rate limit: next turn in 5.0s", now=now)
    row = _row(mid)
    assert (row["state"], row["attempt_count"], row["lease_owner"], row["lease_expires_at"],
            row["error_code"]) == ("retrying", 0, None, None, "rate_limited")
    assert row["next_attempt_at"] == until
    info = outbox.status(mid)
    assert info is not None and info["attempts"] == []
    held = [h for h in info["history"] if h["action"] == "rate_limited"]
    assert len(held) == 1
    assert (held[0]["from_state"], held[0]["to_state"], held[0]["code"]) == (
        "sending", "retrying", "rate_limited")
    assert "5.0s" in held[0]["reason"]
    # Not before its turn; at its turn, the next claim is attempt 1 again.
    assert outbox.claim(mid, worker="w2", lease_seconds=60, now=until - dt.timedelta(seconds=1)) is None
    again = outbox.claim(mid, worker="w2", lease_seconds=60, now=until)
    assert again is not None and again.attempt_number == 1
    assert outbox.finish(again, Outcome(State.SENT, provider_message_id="p"), latency_ms=1, now=until)
    info = outbox.status(mid)
    assert info is not None and info["attempt_count"] == 1
    assert [a["number"] for a in info["attempts"]] == [1]


def test_release_keeps_the_verify_flag_the_claim_found(backend: str) -> None:
    mid = _queued()
    now = outbox.utcnow()
    dead = outbox.claim(mid, worker="w1", lease_seconds=60, now=now)
    assert dead is not None
    later = now + dt.timedelta(seconds=61)  # the first worker died: the takeover must verify
    takeover = outbox.claim(mid, worker="w2", lease_seconds=60, now=later)
    assert takeover is not None and takeover.verify and takeover.attempt_number == 2
    assert outbox.release(takeover, until=later, reason="limited", now=later)
    row = _row(mid)
    assert row["verify_before_send"] is True
    assert row["attempt_count"] == 1  # the dead worker's attempt counts; the held-back one not
    info = outbox.status(mid)
    assert info is not None and [a["outcome"] for a in info["attempts"]] == ["unknown"]


def test_release_after_the_lease_was_lost_moves_nothing(backend: str) -> None:
    mid = _queued()
    now = outbox.utcnow()
    first = outbox.claim(mid, worker="w1", lease_seconds=60, now=now)
    assert first is not None
    second = outbox.claim(mid, worker="w2", lease_seconds=60, now=now + dt.timedelta(seconds=61))
    assert second is not None
    assert not outbox.release(first, until=now, reason="limited")
    row = _row(mid)
    assert (row["state"], row["lease_owner"], row["attempt_count"]) == ("sending", second.owner, 2)
    info = outbox.status(mid)
    assert info is not None and [a["outcome"] for a in info["attempts"]] == ["unknown", None]
    assert info["history"][-1]["action"] == "lease_lost"
