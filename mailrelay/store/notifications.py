"""The outbox of outcome notifications: the obligation to publish each outcome, and its state.

A row is written in the transaction that moves its message to a final state (outbox.py's
finish and reject, and pg_fastpath's FINISH), so an outcome can never be recorded without
the obligation to tell the producer. It stays ``pending`` until the broker has accepted
the outcome task (``mark_published``); the publisher is mailrelay/notify.py.

``next_try_at`` is when the reconciler may publish it: ``MAILRELAY_NOTIFY_RETRY_AFTER``
after it was written (the worker that wrote it publishes at once; the reconciler is for
when it could not), and later after every failed try. The reconciler takes due rows with a
conditional UPDATE of ``next_try_at``, so two reconcilers (two beats) share them out
instead of both publishing each. Times are the database's clock on PostgreSQL.

Nothing here holds content: the kwargs are ids, codes and the producer's metadata.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, text, update

from mailrelay.config import get_settings
from mailrelay.store.db import db_errors, db_now, get_autocommit_engine, get_engine
from mailrelay.store.models import AUDIT, NOTIFICATIONS

PENDING = "pending"
PUBLISHED = "published"
# Given up by an operator (`mailrelay notify drop`, audited): never published.
DROPPED = "dropped"
# A notification that keeps failing is tried at most this far apart.
LONGEST_WAIT = 600.0

_n = NOTIFICATIONS.c
# PostgreSQL's clock in the columns' form (UTC without a zone), inside the statement: no
# round trip of its own on the path that publishes.
_DB_CLOCK = text("(now() AT TIME ZONE 'UTC')")


@dataclass(frozen=True)
class Pending:
    """One outcome to publish: ``task`` with ``kwargs`` to ``queue``."""

    id: int
    message_id: str
    task: str
    queue: str
    kwargs: dict[str, Any]


def outcome_kwargs(*, message_id: str, state: str, error_code: str | None, provider: str | None,
                   provider_message_id: str | None, rfc822_message_id: str | None,
                   attempts: int, metadata: Any, replays: int,
                   request_id: str | None) -> dict[str, Any]:
    """The outcome task's kwargs; pg_fastpath.FINISH_SQL builds the same object in SQL.
    ``request_id`` is the producer's ``mailrelay.send`` task id (what ``send_task``
    returned to it), for a producer that keeps no result of that task."""
    return {"id": message_id, "state": state, "error_code": error_code, "provider": provider,
            "provider_message_id": provider_message_id, "rfc822_message_id": rfc822_message_id,
            "attempts": attempts, "metadata": metadata, "replays": replays,
            "request_id": request_id}


def write(conn: Connection, *, notify: str, kwargs: dict[str, Any],
          now: dt.datetime) -> Pending:
    """The obligation for an outcome, in the caller's transaction. ``notify`` is the
    message's ``notify`` column (JSON with task, queue and metadata). Timed on the
    database's clock, as the reconciler and the age gauge judge it (``now`` on SQLite)."""
    retry_after = get_settings().notify_retry_after
    if conn.dialect.name == "postgresql":
        now = db_now(conn)
    target = json.loads(notify)
    encoded = json.dumps(kwargs, separators=(",", ":"), ensure_ascii=False)
    new_id = conn.execute(insert(NOTIFICATIONS).values(
        message_id=kwargs["id"], replays=kwargs["replays"], outcome=kwargs["state"],
        state=PENDING, task=target["task"], queue=target["queue"], kwargs=encoded, created_at=now,
        next_try_at=now + dt.timedelta(seconds=retry_after), tries=0,
    ).returning(_n.id)).scalar_one()
    return Pending(int(new_id), kwargs["id"], target["task"], target["queue"], kwargs)


def target_json(task: str, queue: str, metadata: Any) -> str:
    """The ``messages.notify`` column's value."""
    return json.dumps({"task": task, "queue": queue, "metadata": metadata},
                      separators=(",", ":"), ensure_ascii=False)


def _pending(row: Any) -> Pending:
    return Pending(int(row.id), row.message_id, row.task, row.queue, json.loads(row.kwargs))


def mark_published(ids: Sequence[int], *, now: dt.datetime | None = None) -> int:
    """Record that the broker accepted these; how many were still pending."""
    if not ids:
        return 0
    postgresql = get_engine().dialect.name == "postgresql"
    stamp: Any = now or (_DB_CLOCK if postgresql else dt.datetime.now(dt.UTC))
    statement = (update(NOTIFICATIONS).where(_n.id.in_(list(ids)), _n.state == PENDING)
                 .values(state=PUBLISHED, published_at=stamp, last_error=None))
    if postgresql:
        # One statement in autocommit: no BEGIN and COMMIT round trips on the path that
        # publishes every outcome.
        with db_errors(), get_autocommit_engine().connect() as conn:
            return int(conn.execute(statement).rowcount)
    with db_errors(), get_engine().begin() as conn:
        return int(conn.execute(statement).rowcount)


def mark_failed(notification_id: int, code: str, *, retry_after: float) -> None:
    """A publish failed: count the try and put the next one off (doubling, at most
    LONGEST_WAIT); the reconciler takes it then."""
    with db_errors(), get_engine().begin() as conn:
        now = db_now(conn)
        tries = conn.execute(select(_n.tries).where(_n.id == notification_id)).scalar()
        wait = _wait(retry_after, int(tries or 0) + 1)
        conn.execute(update(NOTIFICATIONS)
                     .where(_n.id == notification_id, _n.state == PENDING)
                     .values(tries=_n.tries + 1, last_error=code[:64],
                             next_try_at=now + dt.timedelta(seconds=wait)))


def _wait(retry_after: float, tries: int) -> float:
    return float(min(retry_after * 2 ** min(max(tries - 1, 0), 16), LONGEST_WAIT))


def take_due(*, limit: int, hold: float, now: dt.datetime | None = None) -> list[Pending]:
    """Up to ``limit`` pending notifications that are due, oldest due first, each put off
    by ``hold`` seconds in the same statement: another reconciler running at the same time
    finds them not due. The caller publishes them and marks them."""
    with db_errors(), get_engine().begin() as conn:
        now = now or db_now(conn)
        due = (select(_n.id).where(_n.state == PENDING, _n.next_try_at <= now)
               .order_by(_n.next_try_at).limit(limit))
        if conn.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        rows = conn.execute(
            update(NOTIFICATIONS)
            .where(_n.id.in_(due.scalar_subquery()), _n.state == PENDING, _n.next_try_at <= now)
            .values(next_try_at=now + dt.timedelta(seconds=hold))
            .returning(_n.id, _n.message_id, _n.task, _n.queue, _n.kwargs)).all()
    return sorted((_pending(row) for row in rows), key=lambda p: p.id)


def count_pending(*, created_before: dt.datetime | None = None,
                  queue: str | None = None) -> int:
    """How many are pending (of those written before ``created_before``; to ``queue``)."""
    query = select(func.count()).select_from(NOTIFICATIONS).where(_n.state == PENDING)
    if created_before is not None:
        query = query.where(_n.created_at < created_before)
    if queue is not None:
        query = query.where(_n.queue == queue)
    with db_errors(), get_engine().connect() as conn:
        return int(conn.execute(query).scalar_one())


def clock() -> dt.datetime:
    """The database's clock (what ``created_at`` is written on)."""
    with db_errors(), get_engine().connect() as conn:
        return db_now(conn)


def drop(queue: str, *, operator: str, reason: str) -> int:
    """Give up the pending notifications to ``queue`` (a queue that will never exist):
    ``dropped``, each with an audit row naming the operator and the reason, in one
    transaction; how many. Their messages may then be deleted by the retention job."""
    with db_errors(), get_engine().begin() as conn:
        now = db_now(conn)
        dropped = conn.execute(
            update(NOTIFICATIONS).where(_n.state == PENDING, _n.queue == queue)
            .values(state=DROPPED, last_error="dropped")
            .returning(_n.message_id, _n.outcome)).all()
        if dropped:
            conn.execute(insert(AUDIT), [
                {"message_id": row.message_id, "at": now, "actor": operator[:200],
                 "action": "notify_dropped", "from_state": row.outcome, "to_state": row.outcome,
                 "reason": reason} for row in dropped])
    return len(dropped)


def make_due() -> int:
    """Every pending notification due now (an operator's `notify publish`); how many."""
    with db_errors(), get_engine().begin() as conn:
        now = db_now(conn)
        return int(conn.execute(update(NOTIFICATIONS).where(_n.state == PENDING)
                                .values(next_try_at=now)).rowcount)


def _as_dict(row: Any, now: dt.datetime | None = None) -> dict[str, Any]:
    kwargs = json.loads(row.kwargs)
    shown = {"notification_id": int(row.id), "message_id": row.message_id,
             "outcome": row.outcome, "replays": row.replays, "state": row.state,
             "task": row.task, "queue": row.queue, "error_code": kwargs.get("error_code"),
             "created_at": _iso(row.created_at), "published_at": _iso(row.published_at),
             "next_try_at": _iso(row.next_try_at), "tries": row.tries,
             "last_error": row.last_error}
    if now is not None:
        shown["age_seconds"] = round(max((now - row.created_at).total_seconds(), 0.0), 3)
    return shown


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def of_message(conn: Connection, message_id: str) -> list[dict[str, Any]]:
    """The message's notifications, one per life (replay), oldest first."""
    rows = conn.execute(select(NOTIFICATIONS).where(_n.message_id == message_id)
                        .order_by(_n.replays, _n.id)).all()
    return [_as_dict(row) for row in rows]


def pending(*, limit: int | None = 100) -> list[dict[str, Any]]:
    """What is still to be published, oldest first (no kwargs: ids and codes only)."""
    with db_errors(), get_engine().connect() as conn:
        now = db_now(conn)
        rows = conn.execute(select(NOTIFICATIONS).where(_n.state == PENDING)
                            .order_by(_n.created_at, _n.id).limit(limit)).all()
    return [_as_dict(row, now) for row in rows]


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_age: float


def backlog(conn: Connection, now: dt.datetime) -> Backlog:
    """How many are pending and the oldest one's age in seconds (0: none)."""
    row = conn.execute(select(func.count(), func.min(_n.created_at))
                       .where(_n.state == PENDING)).one()
    oldest = row[1]
    if oldest is not None and oldest.tzinfo is None:  # SQLite's aggregates come back naive
        oldest = oldest.replace(tzinfo=dt.UTC)
    age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
    return Backlog(int(row[0]), age)
