"""The delivery sequence's exactly-once rules, with a provider that fails where we say."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select, text, update

from mailrelay import leases, providers
from mailrelay.auth import accounts
from mailrelay.config import get_settings
from mailrelay.delivery import deliver
from mailrelay.errors import ProviderError
from mailrelay.message import validate
from mailrelay.providers.base import (
    Capabilities,
    Outbound,
    ProviderAdapter,
    SendResult,
    TokenSource,
    before_request,
    guarded,
)
from mailrelay.store import oncall, outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import MESSAGES, SINK_DELIVERIES

# No settle time and no pause between the two lookups: these tests are about what is asked
# and sent, not when (tests/integration cover the waits).
pytestmark = pytest.mark.usefixtures("verify_at_once")


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
    scripted.lookups, scripted.sends = [None, None], ["id-2"]  # asked twice, not there: sent once
    assert deliver(mid, worker="w").state == "sent"
    assert scripted.lookups == [] and len(scripted.sent) == 2


def test_a_5xx_on_send_is_checked_before_the_resend(scripted: type[Scripted]) -> None:
    mid = _message()
    scripted.sends = [ProviderError("provider_unavailable", status=503, sent_unknown=True), "id-2"]
    deliver(mid, worker="w")
    _due(mid)
    scripted.lookups = [None, None]
    assert deliver(mid, worker="w").state == "sent"
    assert len(scripted.sent) == 2  # asked twice, not found, sent once more


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


# --- issue 12: leases, late sends, lagging lookups, poison messages --------------------

def _expire_lease(mid: str) -> None:
    """As if the worker holding the message died: its lease ran out."""
    with get_engine().begin() as conn:
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == mid).values(
            lease_expires_at=outbox.utcnow() - dt.timedelta(hours=1)))


def test_a_send_recorded_after_its_lease_was_lost_is_not_sent_again(scripted: type[Scripted]) -> None:
    mid = _message()
    scripted.sends = [ProviderError("provider_timeout", sent_unknown=True)]
    assert deliver(mid, worker="w").state == "retrying"
    with get_engine().begin() as conn:  # what a late finish of a lost attempt leaves behind
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == mid).values(
            provider_message_id="p-late", next_attempt_at=None))
    assert deliver(mid, worker="w").state == "sent"  # neither asked nor sent
    assert len(scripted.sent) == 1 and outbox.status(mid)["provider_message_id"] == "p-late"  # type: ignore[index]


def test_a_message_that_keeps_losing_its_worker_fails_as_worker_lost(
        scripted: type[Scripted]) -> None:
    mid = _message()
    for n in range(4):  # four workers die mid-attempt: one claim, three takeovers
        assert outbox.claim(mid, worker=f"dying-{n}", lease_seconds=10) is not None
        _expire_lease(mid)
    assert deliver(mid, worker="w").state == "failed"  # the fourth takeover is one too many
    assert scripted.sent == [] and _state(mid) == ("failed", "worker_lost", True)
    assert [row["id"] for row in oncall.failed(code="worker_lost")] == [mid]


def test_a_worker_lost_after_the_retry_window_closed_fails_the_message(
        scripted: type[Scripted]) -> None:
    mid = _message()
    assert outbox.claim(mid, worker="dying", lease_seconds=10) is not None
    _expire_lease(mid)
    with get_engine().begin() as conn:
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == mid).values(
            created_at=outbox.utcnow() - dt.timedelta(days=30)))
    assert deliver(mid, worker="w").state == "failed"
    assert scripted.sent == [] and _state(mid) == ("failed", "worker_lost", True)


def test_lookups_wait_for_the_settle_time_after_an_unknown_outcome(
        scripted: type[Scripted], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILRELAY_VERIFY_SETTLE_SECONDS", "30")
    get_settings.cache_clear()
    mid = _message()
    scripted.sends = [ProviderError("provider_timeout", sent_unknown=True)]
    deliver(mid, worker="w")
    _due(mid)
    report = deliver(mid, worker="w")  # too soon to trust a lookup: given back, nothing asked
    assert report.state == "retrying" and report.retry_in is not None and 25 < report.retry_in <= 30
    assert scripted.sent and len(scripted.sent) == 1
    info = outbox.status(mid)
    assert info is not None and info["attempt_count"] == 1  # the wait spent no attempt
    assert info["history"][-1]["action"] == "settle"


def test_one_miss_of_a_lagging_lookup_is_not_proof(scripted: type[Scripted]) -> None:
    mid = _message()
    scripted.sends = [ProviderError("provider_timeout", sent_unknown=True)]
    deliver(mid, worker="w")
    _due(mid)
    scripted.lookups = [None, "indexed-by-now"]  # the index caught up between the lookups
    assert deliver(mid, worker="w").state == "sent"
    assert len(scripted.sent) == 1


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILRELAY_LEASE_SECONDS", "10")
    get_settings.cache_clear()
    monkeypatch.setattr(leases._Keeper, "TICK", 0.05)


def test_a_send_longer_than_its_lease_keeps_it(clean_db: None, short_lease: None) -> None:
    """The keeper renews the lease of a send in progress: a send three leases long keeps
    it, and another worker (on the database's clock) cannot take the message over."""
    mid = _message()
    claim = outbox.claim(mid, worker="w", lease_seconds=1.5)
    assert claim is not None
    lease = leases.Lease(claim, 1.5)
    taken = []
    with leases.kept(lease), guarded(lease):
        for step in range(15):  # 4.5 s of requests: upload chunks, say
            before_request(sends=step == 14)
            time.sleep(0.3)
            taken.append(outbox.claim(mid, worker="other", lease_seconds=1.5))
    assert lease.renewals >= 3 and taken == [None] * 15


class StolenLease(Scripted):
    def send(self, out: Outbound, tokens: TokenSource | None = None) -> SendResult:
        with get_engine().begin() as conn:  # another worker took the message over meanwhile
            conn.execute(update(MESSAGES).where(MESSAGES.c.id == out.message_id)
                         .values(lease_owner="someone-else"))
        before_request(sends=False)
        time.sleep(0.5)
        before_request(sends=True)
        self.sent.append(out.rfc822_message_id)
        return SendResult(provider_message_id="should-not")


def test_a_send_stops_before_its_request_once_the_lease_is_gone(
        scripted: type[Scripted], short_lease: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(providers.REGISTRY, "sink", "tests.unit.test_delivery:StolenLease")
    providers._instances.clear()
    monkeypatch.setattr(leases.Lease, "due", lambda self: True)  # renew before every request
    mid = _message()
    report = deliver(mid, worker="w")
    assert report.state is None  # lease lost: the new owner decides
    assert StolenLease.sent == []


def test_a_task_that_comes_early_by_a_fast_worker_clock_comes_back_when_due(
        scripted: type[Scripted], monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim judges by the database's clock; a worker whose clock runs ahead sees the
    retry as due already. The task must come back when it is due, not be dropped."""
    mid = _message()
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE messages SET state = 'retrying', "
                          "next_attempt_at = (now() AT TIME ZONE 'UTC') + interval '3 seconds' "
                          "WHERE id = :id"), {"id": mid})
    real = outbox.utcnow
    monkeypatch.setattr(outbox, "utcnow", lambda: real() + dt.timedelta(seconds=10))
    report = deliver(mid, worker="w")
    assert report.state == "retrying" and scripted.sent == []
    assert report.retry_in is not None and 2 < report.retry_in <= 3.5
