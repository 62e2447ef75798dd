"""What only the database knows, read for beat's metric export (``mailrelay.export``).

Every query is bounded by what is still in flight or recently failed, never by the size
of the outbox: each one's WHERE clause repeats a partial index's predicate
(``ix_messages_pending``, ``ix_messages_failed``), so its cost follows the backlog, not
the millions of sent rows. That is also why sent and rejected messages are not counted
here: the workers' ``mailrelay_deliveries_total`` and ``mailrelay_intake_total`` give
their rates. Ages are measured on the database's clock, like leases.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import and_, case, func, select

from mailrelay.store import notifications
from mailrelay.store.db import db_errors, db_now, get_engine
from mailrelay.store.models import ACCOUNTS, MESSAGES, ROLLOUTS
from mailrelay.store.states import State

_m = MESSAGES.c
PENDING_STATES = (State.QUEUED.value, State.SENDING.value, State.RETRYING.value)
FAILED_WINDOW = dt.timedelta(hours=1)


@dataclass
class OutboxGauges:
    """One reading; every mapping is keyed by provider (and state, code...)."""

    now: dt.datetime
    messages: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, state)
    oldest_queued_age: dict[str, float] = field(default_factory=dict)
    oldest_due_retrying_age: dict[str, float] = field(default_factory=dict)
    expired_leases: dict[str, int] = field(default_factory=dict)
    failed_last_hour: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, code)
    accounts: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, state)
    rollouts: dict[str, tuple[str, float]] = field(default_factory=dict)  # provider → (state, %)
    # Outcome notifications not yet accepted by the broker (ix_notifications_pending).
    notifications: notifications.Backlog = field(
        default_factory=lambda: notifications.Backlog(0, 0.0))


def _seconds(now: dt.datetime, then: dt.datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:  # SQLite hands back naive UTC from aggregates
        then = then.replace(tzinfo=dt.UTC)
    return max((now - then).total_seconds(), 0.0)


def pending_statement(now: dt.datetime) -> object:
    """Counts, ages and dead leases of the messages in flight, per provider and state."""
    return (select(_m.provider, _m.state, func.count().label("n"),
                   func.min(_m.created_at).label("oldest_created"),
                   func.min(case((_m.next_attempt_at <= now, _m.next_attempt_at)))
                   .label("oldest_due"),
                   func.sum(case((_m.lease_expires_at < now, 1), else_=0)).label("expired"))
            .where(_m.state.in_(PENDING_STATES))
            .group_by(_m.provider, _m.state))


def failed_statement(now: dt.datetime) -> object:
    """Messages failed for good in the last hour, per provider and error code."""
    return (select(_m.provider, _m.error_code, func.count().label("n"))
            .where(and_(_m.state == State.FAILED.value, _m.updated_at >= now - FAILED_WINDOW))
            .group_by(_m.provider, _m.error_code))


def failed_total_statement() -> object:
    return (select(_m.provider, func.count().label("n"))
            .where(_m.state == State.FAILED.value).group_by(_m.provider))


def read() -> OutboxGauges:
    """One consistent-enough reading (one connection, the database's clock)."""
    with db_errors(), get_engine().connect() as conn:
        now = db_now(conn)
        gauges = OutboxGauges(now=now)
        for row in conn.execute(pending_statement(now)):  # type: ignore[call-overload]
            provider = row.provider or ""
            gauges.messages[(provider, row.state)] = int(row.n)
            if row.state == State.QUEUED.value:
                gauges.oldest_queued_age[provider] = _seconds(now, row.oldest_created)
            elif row.state == State.RETRYING.value:
                gauges.oldest_due_retrying_age[provider] = _seconds(now, row.oldest_due)
            elif row.state == State.SENDING.value:
                gauges.expired_leases[provider] = int(row.expired or 0)
        for row in conn.execute(failed_total_statement()):  # type: ignore[call-overload]
            gauges.messages[(row.provider or "", State.FAILED.value)] = int(row.n)
        for row in conn.execute(failed_statement(now)):  # type: ignore[call-overload]
            gauges.failed_last_hour[(row.provider or "", row.error_code or "")] = int(row.n)
        for row in conn.execute(select(ACCOUNTS.c.provider, ACCOUNTS.c.state, func.count())
                                .group_by(ACCOUNTS.c.provider, ACCOUNTS.c.state)):
            gauges.accounts[(row[0], row[1])] = int(row[2])
        for row in conn.execute(select(ROLLOUTS.c.provider, ROLLOUTS.c.state,
                                       ROLLOUTS.c.percent_bp)):
            gauges.rollouts[row.provider] = (row.state, row.percent_bp / 100)
        gauges.notifications = notifications.backlog(conn, now)
    return gauges
