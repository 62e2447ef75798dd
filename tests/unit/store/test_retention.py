from __future__ import annotations

import datetime as dt

from mailrelay.auth import accounts
from mailrelay.message import validate
from mailrelay.store import outbox
from mailrelay.store.outbox import Outcome
from mailrelay.store.retention import expire_keys
from mailrelay.store.states import State

SENDER = "sender@example.com"
DAY = dt.timedelta(days=1)


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
