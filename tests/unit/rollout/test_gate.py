"""The rollout gate at intake: who is admitted, who goes through the fallback, who is refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, update

from mailrelay.auth import accounts
from mailrelay.intake import take_in
from mailrelay.rollout import gate, manage
from mailrelay.rollout.bucket import bucket
from mailrelay.rollout.manage import Changes
from mailrelay.store import outbox, pg_fastpath
from mailrelay.store.db import get_autocommit_engine, get_engine
from mailrelay.store.models import ROLLOUTS

RELAY = "relay@example.net"
SALT = "gate-test"


@pytest.fixture
def senders(clean_db: None) -> list[str]:
    """Sink accounts (the provider under rollout) and an SMTP relay account (the fallback)."""
    accounts.add("smtp", RELAY, tenant="smtp+insecure://127.0.0.1:2525")
    found = [f"user{i}@example.com" for i in range(40)]
    for address in found:
        accounts.add("sink", address)
    gate.forget()
    return found


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    gate.forget()
    yield
    gate.forget()


def _rollout(**changes: Any) -> None:
    defaults: dict[str, Any] = {"percent_bp": 2500, "salt": SALT, "fallback": RELAY}
    manage.set_rollout("sink", Changes(**{**defaults, **changes}), actor="test", reason="test")


def _send(sender: str, to: str = "r@example.org", **fields: Any) -> Any:
    return take_in({"from": sender, "to": [to], "subject": "s", "text": "t", **fields},
                   request_id=None, actor="test")


def _status(accepted: Any) -> dict[str, Any]:
    info = outbox.status(accepted.result.message_id)
    assert info is not None
    return info


def test_at_25_percent_exactly_the_low_buckets_are_admitted_and_the_rest_go_to_the_fallback(
        senders: list[str]) -> None:
    _rollout()
    admitted = {s for s in senders if bucket(SALT, s) < 2500}
    assert 0 < len(admitted) < len(senders)
    for sender in senders:
        accepted = _send(sender)
        info = _status(accepted)
        assert info["state"] == "queued"
        route = info["route"]
        assert route["bucket"] == bucket(SALT, sender) and route["percent"] == 25
        if sender in admitted:
            assert (accepted.provider, info["provider"], info["via"], route["decision"]) == (
                "sink", "sink", None, "admitted")
        else:
            assert (accepted.provider, info["provider"], info["via"], route["decision"]) == (
                "smtp", "smtp", RELAY, "fallback")
            assert "fallback" in route["reason"] and str(route["bucket"]) in route["reason"]


def test_without_a_fallback_the_others_are_rejected_with_rollout_gated(senders: list[str]) -> None:
    _rollout(fallback="")
    outside = next(s for s in senders if bucket(SALT, s) >= 2500)
    inside = next(s for s in senders if bucket(SALT, s) < 2500)
    refused = _send(outside)
    info = _status(refused)
    assert (info["state"], info["error_code"]) == ("rejected", "rollout_gated")
    assert info["route"]["decision"] == "gated" and "no fallback" in info["route"]["reason"]
    assert outside not in (info["error_detail"] or "")
    assert _send(inside).result.state == "queued"


def test_a_repeat_is_the_earlier_message_whatever_the_gate_says_now(senders: list[str]) -> None:
    outside = next(s for s in senders if bucket(SALT, s) >= 2500)
    first = _send(outside, idempotency_key="k1")
    assert first.provider == "sink" and _status(first)["route"] is None  # no rollout yet
    _rollout(fallback="")
    again = _send(outside, idempotency_key="k1")
    assert (again.result.message_id, again.result.state, again.provider) == (
        first.result.message_id, "queued", "sink")


def test_internal_domains_keep_outside_recipients_off_the_new_provider(senders: list[str]) -> None:
    _rollout(percent_bp=10_000, internal_domains=("Example.ORG",))
    inside = _status(_send(senders[0], to="colleague@example.org"))
    outside = _status(_send(senders[0], to="customer@elsewhere.example"))
    assert (inside["provider"], inside["route"]["decision"]) == ("sink", "admitted")
    assert inside["route"]["internal_domains"] == ["example.org"]
    assert (outside["provider"], outside["route"]["decision"]) == ("smtp", "fallback")
    assert "outside the internal domains" in outside["route"]["reason"]
    mixed = _status(take_in({"from": senders[0], "to": ["a@example.org"],
                             "cc": ["b@elsewhere.example"], "subject": "s", "text": "t"},
                            request_id=None, actor="test"))
    assert mixed["provider"] == "smtp"


def test_dry_run_admits_everyone_and_records_what_enforce_would_do(senders: list[str]) -> None:
    _rollout(mode="dry_run", fallback="")
    routes = [_status(_send(sender)) for sender in senders]
    assert {(r["state"], r["provider"]) for r in routes} == {("queued", "sink")}
    would = {r["route"]["would"] for r in routes}
    assert would == {"admitted", "gated"}
    assert all(r["route"]["decision"] == "admitted" for r in routes)


def test_a_message_routed_to_the_fallback_must_fit_the_fallback_provider(senders: list[str]) -> None:
    _rollout(percent_bp=0)
    many = [f"r{i}@example.org" for i in range(150)]  # the sink takes 1000, SMTP 100
    result = take_in({"from": senders[0], "to": many, "subject": "s", "text": "t"},
                     request_id=None, actor="test")
    assert (result.result.state, result.result.error_code) == ("rejected", "too_many_recipients")


def test_gate_results_are_counted(senders: list[str]) -> None:
    def count(result: str) -> float:
        return REGISTRY.get_sample_value("mailrelay_rollout_gate_total",
                                         {"provider": "sink", "result": result}) or 0.0

    before = {r: count(r) for r in ("admitted", "fallback", "gated")}
    _rollout()
    for sender in senders:
        _send(sender)
    admitted = sum(bucket(SALT, s) < 2500 for s in senders)
    assert count("admitted") - before["admitted"] == admitted
    assert count("fallback") - before["fallback"] == len(senders) - admitted
    assert count("gated") == before["gated"]
    assert REGISTRY.get_sample_value("mailrelay_rollout_percent", {"provider": "sink"}) == 25


def _statements(sender: str, n: int = 20) -> list[str]:
    """The SQL statements ``n`` intakes of a message from ``sender`` send, once warm:
    through either engine, or as PostgreSQL's prepared statements (pg_fastpath, straight
    on the DBAPI connection, which SQLAlchemy's events do not see)."""
    executed: list[str] = []

    def count(*args: Any) -> None:
        executed.append(str(args[2]))

    def run(statement: str, params: dict[str, Any], **options: Any) -> Any:
        executed.append(statement)
        return real_run(statement, params, **options)

    engines = [get_engine(), get_autocommit_engine()]
    real_run = pg_fastpath.run
    _send(sender)  # warm: the gate's cache, the engine's pool
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    pg_fastpath.run = run  # type: ignore[assignment]
    try:
        for _ in range(n):
            _send(sender)
    finally:
        pg_fastpath.run = real_run  # type: ignore[assignment]
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
    return executed


def test_the_gate_adds_no_database_round_trip_to_intake(senders: list[str]) -> None:
    without = _statements(senders[0])
    assert without
    _rollout(percent_bp=10_000)
    with_rollout = _statements(senders[0])
    assert len(with_rollout) == len(without)
    assert not [sql for sql in with_rollout if "rollouts" in sql]


def test_a_change_reaches_the_cache_within_its_age(senders: list[str]) -> None:
    _rollout(percent_bp=10_000)
    assert gate.current_rows()["sink"].percent_bp == 10_000
    with get_engine().begin() as conn:  # as another process's change would look
        conn.execute(update(ROLLOUTS).values(percent_bp=0))
    assert gate.current_rows()["sink"].percent_bp == 10_000  # cached
    assert gate.current_rows(max_age=0)["sink"].percent_bp == 0
    assert gate.CACHE_SECONDS <= 10


def test_no_rollout_means_admitted_and_nothing_recorded(senders: list[str]) -> None:
    info = _status(_send(senders[0]))
    assert (info["provider"], info["route"], info["via"]) == ("sink", None, None)


def test_an_unusable_fallback_gates_and_says_why_without_an_address(senders: list[str]) -> None:
    from mailrelay.store.models import ACCOUNTS

    _rollout()
    with get_engine().begin() as conn:
        conn.execute(update(ACCOUNTS).where(ACCOUNTS.c.address == RELAY).values(state="disabled"))
    gate.forget()
    outside = next(s for s in senders if bucket(SALT, s) >= 2500)
    info = _status(_send(outside))
    assert (info["state"], info["error_code"]) == ("rejected", "rollout_gated")
    assert "the fallback account is disabled" in info["error_detail"]
    assert RELAY not in info["error_detail"] and outside not in info["error_detail"]
    accounts.remove(RELAY)
    gate.forget()
    info = _status(_send(outside))
    assert (info["error_code"], info["route"]["decision"]) == ("rollout_gated", "gated")
    assert "not registered" in info["error_detail"]
