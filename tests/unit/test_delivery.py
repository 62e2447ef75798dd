"""The delivery sequence's exactly-once rules, with a provider that fails where we say."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select, update

from mailrelay import providers
from mailrelay.auth import accounts
from mailrelay.config import get_settings
from mailrelay.delivery import deliver
from mailrelay.errors import ProviderError
from mailrelay.message import validate
from mailrelay.providers.base import Capabilities, Outbound, ProviderAdapter, SendResult, TokenSource
from mailrelay.store import oncall, outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import MESSAGES, SINK_DELIVERIES


class Scripted(ProviderAdapter):
    """A provider edge that plays a script: what find_sent and send do, call by call."""

    name = "sink"
    capabilities = Capabilities(max_recipients=10, max_message_bytes=10**6, inline_images=True,
                                large_message_path=None, sends_per_minute=None, can_verify=True)
    lookups: ClassVar[list[Any]] = []
    sends: ClassVar[list[Any]] = []
    sent: ClassVar[list[str]] = []

    def find_sent(self, out: Outbound, tokens: TokenSource | None = None) -> str | None:
        step = self.lookups.pop(0)
        if isinstance(step, Exception):
            raise step
        return step  # type: ignore[no-any-return]

    def send(self, out: Outbound, tokens: TokenSource | None = None) -> SendResult:
        step = self.sends.pop(0)
        self.sent.append(out.rfc822_message_id)
        if isinstance(step, Exception):
            raise step
        return SendResult(provider_message_id=step)


@pytest.fixture
def scripted(clean_db: None, clean_redis: None, monkeypatch: pytest.MonkeyPatch) -> type[Scripted]:
    monkeypatch.setitem(providers.REGISTRY, "sink", "tests.unit.test_delivery:Scripted")
    providers._instances.clear()
    Scripted.lookups, Scripted.sends, Scripted.sent = [], [], []
    yield Scripted
    providers._instances.clear()


def _message() -> str:
    accounts.add("sink", "s@example.com")
    ref = outbox.find_account("s@example.com")
    assert ref is not None
    return outbox.accept(validate({"from": "s@example.com", "to": ["r@example.org"], "text": "t"}),
                         ref, request_id=None, actor="t", size_bytes=1).message_id


def _due(mid: str) -> None:
    with get_engine().begin() as conn:
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == mid).values(next_attempt_at=None))


def test_an_unanswered_check_keeps_the_next_attempt_checking(scripted: type[Scripted]) -> None:
    mid = _message()
    scripted.sends = [ProviderError("provider_timeout", sent_unknown=True)]
    assert deliver(mid, worker="w").state == "retrying"  # maybe sent
    _due(mid)
    scripted.lookups = [ProviderError("rate_limited")]  # the check itself fails
    assert deliver(mid, worker="w").state == "retrying"
    _due(mid)
    scripted.lookups = ["found-it"]  # the third attempt must still ask, and not send
    assert deliver(mid, worker="w").state == "sent"
    assert len(scripted.sent) == 1
    info = outbox.status(mid)
    assert info is not None and info["provider_message_id"] == "found-it"


def test_a_failure_after_an_unknown_outcome_stays_marked_for_a_replay(scripted: type[Scripted]) -> None:
    mid = _message()
    scripted.sends = [ProviderError("provider_timeout", sent_unknown=True)]
    deliver(mid, worker="w")
    _due(mid)
    scripted.lookups = [ProviderError("permission_denied")]
    assert deliver(mid, worker="w").state == "failed"
    with get_engine().connect() as conn:
        flag = conn.execute(MESSAGES.select().where(MESSAGES.c.id == mid)).one().verify_before_send
    assert flag is True  # a replay must ask the provider before sending
    assert oncall.replay(mid, operator="op", reason="permission granted")
    assert _state(mid) == ("queued", None, True)
    scripted.lookups, scripted.sends = [None], ["id-2"]  # asked, not there: sent once
    assert deliver(mid, worker="w").state == "sent"
    assert scripted.lookups == [] and len(scripted.sent) == 2


def test_a_5xx_on_send_is_checked_before_the_resend(scripted: type[Scripted]) -> None:
    mid = _message()
    scripted.sends = [ProviderError("provider_unavailable", status=503, sent_unknown=True), "id-2"]
    deliver(mid, worker="w")
    _due(mid)
    scripted.lookups = [None]
    assert deliver(mid, worker="w").state == "sent"
    assert len(scripted.sent) == 2  # asked, not found, sent once more


# --- replays ---------------------------------------------------------------------------

@pytest.fixture
def max_attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    def set_to(attempts: int) -> None:
        monkeypatch.setenv("MAILRELAY_RETRY_MAX_ATTEMPTS", str(attempts))
        get_settings.cache_clear()

    yield set_to
    monkeypatch.undo()
    get_settings.cache_clear()


def _state(mid: str) -> tuple[str, str | None, bool]:
    with get_engine().connect() as conn:
        row = conn.execute(MESSAGES.select().where(MESSAGES.c.id == mid)).one()
    return row.state, row.error_code, row.verify_before_send


def test_a_replayed_message_gets_a_fresh_retry_budget(
        scripted: type[Scripted], max_attempts: Callable[[int], None]) -> None:
    max_attempts(2)
    mid = _message()
    unavailable = ProviderError("provider_unavailable", status=503)
    scripted.sends = [unavailable, unavailable]
    assert deliver(mid, worker="w").state == "retrying"
    _due(mid)
    assert deliver(mid, worker="w").state == "failed"  # 2 attempts: the budget is spent
    assert oncall.replay(mid, operator="op", reason="outage over")
    scripted.sends = [unavailable, unavailable]
    assert deliver(mid, worker="w").state == "retrying"  # attempt 3 is the replay's first
    _due(mid)
    assert deliver(mid, worker="w").state == "failed"  # and attempt 4 its last


def test_a_replay_opens_a_fresh_retry_window(scripted: type[Scripted]) -> None:
    mid = _message()
    with get_engine().begin() as conn:  # accepted long before the retry window's length
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == mid).values(
            created_at=outbox.utcnow() - dt.timedelta(days=30)))
    scripted.sends = [ProviderError("provider_unavailable", status=503)]
    assert deliver(mid, worker="w").state == "failed"  # window closed
    assert oncall.replay(mid, operator="op", reason="outage over")
    scripted.sends = [ProviderError("provider_unavailable", status=503)]
    assert deliver(mid, worker="w").state == "retrying"


def test_a_message_failed_after_it_reached_the_sink_is_not_sent_again_by_a_replay(
        sink_account: str, clean_redis: None, max_attempts: Callable[[int], None]) -> None:
    from mailrelay.providers import sink

    max_attempts(1)
    ref = outbox.find_account(sink_account)
    assert ref is not None
    mid = outbox.accept(validate({"from": sink_account, "to": ["r@example.org"], "text": "t"}),
                        ref, request_id=None, actor="t", size_bytes=1).message_id
    # The one attempt allowed reaches the sink and loses its answer: failed, maybe sent.
    sink.inject_fault("provider_timeout", after_send=True)
    assert deliver(mid, worker="w").state == "failed"
    assert _state(mid) == ("failed", "provider_timeout", True)  # kept for the replay
    assert oncall.replay(mid, operator="op", reason="timeouts")
    assert deliver(mid, worker="w").state == "sent"  # found by Message-ID, not sent again
    with get_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(SINK_DELIVERIES)
                            .where(SINK_DELIVERIES.c.message_id == mid)).scalar() == 1
    info = outbox.status(mid)
    assert info is not None and "not sent again" in (info["attempts"][-1]["detail"] or "")
