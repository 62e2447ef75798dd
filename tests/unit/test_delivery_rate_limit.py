"""Delivery under the mailbox's rate limit: a held-back send is no attempt, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from mailrelay import providers, ratelimit
from mailrelay.auth import accounts
from mailrelay.delivery import deliver
from mailrelay.message import validate
from mailrelay.providers.base import Capabilities, Outbound, ProviderAdapter, SendResult, TokenSource
from mailrelay.redis_client import get_redis
from mailrelay.store import outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import MESSAGES
from tests.unit.store.conftest import backend  # noqa: F401  # runs each test on both backends

SENDER = "s@example.com"

pytestmark = pytest.mark.usefixtures("backend", "clean_redis", "verify_at_once")


class Recorded(ProviderAdapter):
    """A provider edge that records every send and answers lookups from a script."""

    name = "sink"
    capabilities = Capabilities(max_recipients=10, max_message_bytes=10**6, inline_images=True,
                                large_message_path=None, sends_per_minute=None, can_verify=True)
    lookups: ClassVar[list[str | None]] = []
    sent: ClassVar[list[str]] = []

    def find_sent(self, out: Outbound, tokens: TokenSource | None = None) -> str | None:
        return self.lookups.pop(0)

    def send(self, out: Outbound, tokens: TokenSource | None = None) -> SendResult:
        self.sent.append(out.message_id)
        return SendResult(provider_message_id=f"p-{len(self.sent)}")


class Documented(Recorded):
    """A provider whose documented rate is one send a minute."""

    capabilities = Capabilities(max_recipients=10, max_message_bytes=10**6, inline_images=True,
                                large_message_path=None, sends_per_minute=1, can_verify=True)


def _use(monkeypatch: pytest.MonkeyPatch, adapter: type[Recorded]) -> None:
    monkeypatch.setitem(providers.REGISTRY, "sink", f"{__name__}:{adapter.__name__}")
    providers._instances.clear()
    Recorded.lookups, Recorded.sent = [], []



@pytest.fixture(autouse=True)
def _fresh_adapters() -> Iterator[None]:
    yield
    providers._instances.clear()


def _messages(count: int, *, rate_limit: int | None = None) -> list[str]:
    accounts.add("sink", SENDER, rate_limit_per_minute=rate_limit)
    ref = outbox.find_account(SENDER)
    assert ref is not None
    return [outbox.accept(validate({"from": SENDER, "to": ["r@example.org"], "text": f"t{n}"}),
                          ref, request_id=None, actor="t", size_bytes=1).message_id
            for n in range(count)]


def _refill_and_make_due(message_id: str) -> None:
    get_redis().delete(*get_redis().keys("mailrelay:bucket:*"))  # a missing bucket is a full one
    with get_engine().begin() as conn:
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == message_id).values(next_attempt_at=None))


def _limited_count() -> float:
    return REGISTRY.get_sample_value("mailrelay_rate_limited_total", {"provider": "sink"}) or 0.0


def test_a_limited_send_is_given_back_without_an_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, Recorded)
    first, second = _messages(2, rate_limit=1)  # the override: a burst of one
    assert ratelimit.burst(1) == 1
    assert deliver(first, worker="w").state == "sent"
    before = _limited_count()
    report = deliver(second, worker="w")
    assert report.state == "retrying"
    assert report.retry_in is not None and 0 < report.retry_in <= 60  # a countdown, not parked
    assert Recorded.sent == [first]
    assert _limited_count() == before + 1
    info = outbox.status(second)
    assert info is not None
    assert (info["state"], info["attempt_count"], info["attempts"], info["error_code"]) == (
        "retrying", 0, [], "rate_limited")
    assert [h["action"] for h in info["history"]] == ["intake", "claim", "rate_limited"]
    _refill_and_make_due(second)
    assert deliver(second, worker="w").state == "sent"
    info = outbox.status(second)
    assert info is not None and [a["number"] for a in info["attempts"]] == [1]


def test_the_providers_documented_rate_applies_without_an_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, Documented)
    first, second = _messages(2)
    assert deliver(first, worker="w").state == "sent"
    assert deliver(second, worker="w").state == "retrying"
    assert Recorded.sent == [first]


def test_no_rate_means_no_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, Recorded)
    ids = _messages(3)
    assert [deliver(mid, worker="w").state for mid in ids] == ["sent"] * 3
    assert get_redis().keys("mailrelay:bucket:*") == []


def test_a_limited_send_keeps_the_check_it_owes(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, Recorded)
    first, second = _messages(2, rate_limit=1)
    with get_engine().begin() as conn:  # its previous attempt may have reached the provider
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == second).values(verify_before_send=True))
    deliver(first, worker="w")
    assert deliver(second, worker="w").state == "retrying"  # nothing asked, nothing sent
    with get_engine().connect() as conn:
        row = conn.execute(MESSAGES.select().where(MESSAGES.c.id == second)).one()
    assert row.verify_before_send is True
    _refill_and_make_due(second)
    Recorded.lookups = [None, None]  # asked first (twice), not found: sent
    assert deliver(second, worker="w").state == "sent"
    assert Recorded.lookups == [] and Recorded.sent == [first, second]
