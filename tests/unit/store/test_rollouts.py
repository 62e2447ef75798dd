"""Rollout rows (conditional changes with their decision rows) and rerouting, on both backends."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from sqlalchemy import func, select

from mailrelay.auth import accounts
from mailrelay.message import validate
from mailrelay.store import outbox, rollouts
from mailrelay.store.db import get_engine
from mailrelay.store.models import ACCOUNTS, AUDIT, ROLLOUT_DECISIONS
from mailrelay.store.outbox import AccountRef, Outcome
from mailrelay.store.rollouts import DecisionRecord
from mailrelay.store.states import State
from tests.unit.store.test_oncall import _finish, _queued, _row

SENDER, RELAY = "sender@example.com", "relay@example.net"
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def _values(**changes: Any) -> dict[str, Any]:
    return {"mode": "enforce", "state": "running", "percent_bp": 100, "salt": "s",
            "internal_domains": ("example.org",), "fallback": RELAY, "ladder": (100, 500, 10_000),
            "dwell_seconds": 600, "window_seconds": 300, "error_warn": 0.01,
            "error_critical": 0.05, "latency_p95": 10.0, "min_rate": 0.1,
            "consecutive_successes": 5, "failure_limit": 2, "consecutive_error_limit": 4,
            "error_codes": None, "step_started_at": NOW, "successes": 0, "failures": 0,
            "query_errors": 0, "last_evaluated_at": None, **changes}


def _record(decision: str = "set", actor: str = "alice") -> DecisionRecord:
    return DecisionRecord(decision, "because", actor, inputs={"traffic": 1.5},
                          percent_before=100, percent_after=500, state_after="running")


def _accounts() -> tuple[AccountRef, AccountRef]:
    accounts.add("sink", SENDER)
    accounts.add("smtp", RELAY, tenant="smtp+insecure://127.0.0.1:2525")
    sender, relay = outbox.find_account(SENDER), outbox.find_account(RELAY)
    assert sender and relay
    return sender, relay


def _decision_count() -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ROLLOUT_DECISIONS)).scalar() or 0)


def test_a_rollout_round_trips_with_its_fallback_account(backend: str) -> None:
    _, relay = _accounts()
    assert rollouts.create("sink", _values(), _record("create"), now=NOW)
    assert not rollouts.create("sink", _values(), _record("create"), now=NOW)  # one per provider
    row = rollouts.get("sink")
    assert row is not None
    assert (row.version, row.percent_bp, row.internal_domains, row.ladder, row.error_codes) == (
        1, 100, ("example.org",), (100, 500, 10_000), None)
    assert row.fallback_account == relay and row.step_started_at == NOW
    assert [r.provider for r in rollouts.all_rollouts()] == ["sink"]
    [decision] = rollouts.decisions("sink")
    assert (decision["decision"], decision["actor"], decision["inputs"], decision["version"]) == (
        "create", "alice", {"traffic": 1.5}, 1)


def test_a_change_applies_only_at_the_version_read(backend: str) -> None:
    _accounts()
    rollouts.create("sink", _values(), _record("create"))
    assert rollouts.change("sink", 1, {"percent_bp": 500}, _record())
    assert not rollouts.change("sink", 1, {"percent_bp": 10_000}, _record())  # stale version
    row = rollouts.get("sink")
    assert row is not None and (row.version, row.percent_bp) == (2, 500)
    assert _decision_count() == 2
    assert rollouts.last_decisions()["sink"]["version"] == 2


def test_two_writers_at_once_apply_one_change(backend: str) -> None:
    _accounts()
    rollouts.create("sink", _values(), _record("create"))
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contend(n: int) -> None:
        barrier.wait()
        results.append(rollouts.change("sink", 1, {"percent_bp": 100 * (n + 2)},
                                       _record(actor=f"controller{n}")))

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert _decision_count() == 2
    row = rollouts.get("sink")
    assert row is not None and row.version == 2


def test_remove_keeps_the_history(backend: str) -> None:
    _accounts()
    rollouts.create("sink", _values(), _record("create"))
    assert not rollouts.remove("sink", 7, _record("remove"))
    assert rollouts.remove("sink", 1, _record("remove"))
    assert rollouts.get("sink") is None
    assert [d["decision"] for d in rollouts.decisions()] == ["remove", "create"]


def test_only_messages_no_attempt_may_have_reached_are_movable(backend: str) -> None:
    sender, relay = _accounts()
    fresh = _queued(sender)
    retried_cleanly = _queued(sender)
    _finish(retried_cleanly, Outcome(State.RETRYING, code="rate_limited", next_attempt_at=NOW))
    unknown = _queued(sender)
    _finish(unknown, Outcome(State.RETRYING, code="provider_timeout", next_attempt_at=NOW,
                              verify=True))
    settled_later = _queued(sender)  # unknown once, then the provider said "not sent"
    _finish(settled_later, Outcome(State.RETRYING, code="provider_timeout", next_attempt_at=NOW,
                                    verify=True))
    _finish(settled_later, Outcome(State.RETRYING, code="rate_limited", next_attempt_at=NOW))
    sending = _queued(sender)
    assert outbox.claim(sending, worker="w", lease_seconds=60) is not None
    lease_expired = _queued(sender)  # a worker died mid-send; the next claim takes over
    past = outbox.utcnow() - dt.timedelta(minutes=5)
    assert outbox.claim(lease_expired, worker="dead", lease_seconds=10, now=past) is not None
    claim = outbox.claim(lease_expired, worker="w", lease_seconds=60)
    assert claim is not None
    assert outbox.finish(claim, Outcome(State.RETRYING, code="rate_limited", next_attempt_at=NOW),
                         latency_ms=1)
    failed = _queued(sender)
    _finish(failed, Outcome(State.FAILED, code="invalid_recipient"))
    sent = _queued(sender)
    _finish(sent, Outcome(State.SENT, provider_message_id="p"))
    relayed = _queued(relay)  # another provider's message

    assert _row(settled_later).maybe_sent and not _row(settled_later).verify_before_send
    assert _row(lease_expired).maybe_sent
    found = {w.id for w in rollouts.movable("sink")}
    assert found == {fresh, retried_cleanly}
    assert {w.id for w in rollouts.movable("smtp")} == {relayed}


def test_reroute_moves_each_message_once_with_an_audit_row(backend: str) -> None:
    sender, relay = _accounts()
    fresh, other = _queued(sender), _queued(sender)
    moves = [(fresh, '{"decision": "rerouted"}'), (other, '{"decision": "rerouted"}')]
    # The other one is claimed meanwhile: the conditional update leaves it alone.
    assert outbox.claim(other, worker="w", lease_seconds=60) is not None
    moved = rollouts.reroute(moves, provider="sink", via=relay, actor="controller", reason="why")
    assert moved == [fresh]
    assert rollouts.reroute(moves, provider="sink", via=relay, actor="c", reason="again") == []
    row = _row(fresh)
    assert (row.provider, row.via_address, row.state, row.next_attempt_at) == (
        "smtp", RELAY, "queued", None)
    assert outbox.status(fresh)["route"] == {"decision": "rerouted"}  # type: ignore[index]
    with get_engine().connect() as conn:
        audits = conn.execute(select(AUDIT.c.message_id, AUDIT.c.action, AUDIT.c.actor)
                              .where(AUDIT.c.action == "rerouted")).all()
    assert [tuple(a) for a in audits] == [(fresh, "rerouted", "controller")]


def test_a_message_through_a_fallback_is_claimed_for_that_account_and_its_health(
        backend: str) -> None:
    sender, relay = _accounts()
    mid = _queued(sender)
    rollouts.reroute([(mid, "{}")], provider="sink", via=relay, actor="c", reason="r")
    claim = outbox.claim(mid, worker="w", lease_seconds=60)
    assert claim is not None
    assert (claim.provider, claim.from_address, claim.via_address, claim.account_address) == (
        "smtp", SENDER, RELAY, RELAY)
    assert outbox.finish(claim, Outcome(State.FAILED, code="invalid_credentials"), latency_ms=1)
    with get_engine().connect() as conn:
        failures = dict(conn.execute(select(ACCOUNTS.c.address, ACCOUNTS.c.consecutive_failures)).all())
    assert failures == {RELAY: 1, SENDER: 0}


def test_accept_through_a_fallback_stores_the_route(backend: str) -> None:
    sender, relay = _accounts()
    message = validate({"from": SENDER, "to": ["r@example.org"], "subject": "s", "text": "t"})
    result = outbox.accept(message, sender, request_id=None, actor="t", size_bytes=1,
                           provider="smtp", via=relay, route='{"decision": "fallback"}')
    info = outbox.status(result.message_id)
    assert info is not None
    assert (info["provider"], info["via"], info["account"], info["route"]) == (
        "smtp", RELAY, SENDER, {"decision": "fallback"})
