"""Forgetting what the outbox no longer needs: idempotency keys, payloads, whole rows.

A key is unique per account (uq_messages_account_idempotency): while it is remembered, a
request with the same key is the earlier message (or a conflict). After
MAILRELAY_IDEMPOTENCY_RETENTION, a finished message lets go of its key so that the
producer may use it again; the message and its history stay.

An ended message (``sent``, ``failed``, ``rejected``) loses its payload
MAILRELAY_PAYLOAD_RETENTION after it ended (``payload_purged_at`` says when; the hash,
size, Message-ID, provider id, attempts and audit stay), and is deleted with its attempts
and audit MAILRELAY_ROW_RETENTION after it ended. An ended message's ``updated_at`` is
when it ended: nothing else writes it until a replay starts it again, and none of this
writes it.

Whatever its age, a message still in flight keeps its key, its payload and its row, and a
message whose outcome notification is still pending keeps its row (the notification goes
with the row once published). Every
job here works in batches, one short transaction each, walking a partial index oldest
first, so that a backlog never holds long locks on the deliver path.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    TextClause,
    delete,
    exists,
    func,
    select,
    text,
    update,
)

from mailrelay.config import get_settings
from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import (
    ATTEMPTS,
    AUDIT,
    ENDED,
    MESSAGES,
    NOTIFICATIONS,
    PAYLOAD_KEPT,
    PAYLOAD_PURGED,
)
from mailrelay.store.outbox import utcnow
from mailrelay.store.states import FINAL

BATCH = 1000
PURGE_BATCH = 500
# A payload may be tens of MB (TOASTed on PostgreSQL, where dropping it deletes every
# chunk): a batch of payloads also ends at this many bytes of messages, so that it stays
# a short transaction however large the messages are.
PURGE_BATCH_BYTES = 64 * 1024 * 1024

_m = MESSAGES.c
# The models' index predicates as literal SQL, so that each backend's planner matches
# them to ix_messages_payload_kept and ix_messages_payload_purged (a bound parameter in
# their place would not prove the index's WHERE).
_KEPT = text(PAYLOAD_KEPT)
_PURGED = text(PAYLOAD_PURGED)
_ENDED = text(ENDED)
Condition = ColumnElement[bool] | TextClause
_n = NOTIFICATIONS.c
# A row is kept while the producer has not been told how it ended.
_TOLD = ~exists().where(_n.message_id == _m.id, _n.state == "pending")


def expire_keys(retention: dt.timedelta, *, now: dt.datetime | None = None,
                batch: int = BATCH) -> int:
    """Clear the keys of finished messages older than ``retention``; the number cleared.
    Works in batches, one short transaction each, so a backlog never holds long locks."""
    m = MESSAGES.c
    cutoff = (now or utcnow()) - retention
    expired = (m.idempotency_key.is_not(None), m.created_at < cutoff,
               m.state.in_([state.value for state in FINAL]))
    total = 0
    while True:
        with db_errors(), get_engine().begin() as conn:
            ids = conn.execute(select(m.id).where(*expired).limit(batch)).scalars().all()
            if ids:
                conn.execute(update(MESSAGES).where(m.id.in_(ids), *expired)
                             .values(idempotency_key=None))
        total += len(ids)
        if len(ids) < batch:
            return total


@dataclass(frozen=True)
class Retention:
    """How long an ended message keeps its payload, and its row."""

    payload: dt.timedelta
    rows: dt.timedelta

    @classmethod
    def configured(cls) -> Retention:
        """MAILRELAY_PAYLOAD_RETENTION and MAILRELAY_ROW_RETENTION."""
        settings = get_settings()
        return cls(payload=dt.timedelta(seconds=settings.payload_retention),
                   rows=dt.timedelta(seconds=settings.row_retention))


@dataclass
class Removed:
    """What one run removed. ``complete`` is False when it stopped at its time budget
    with work left (the next run goes on from there)."""

    payloads: int = 0
    messages: int = 0
    attempts: int = 0
    audit: int = 0
    notifications: int = 0
    complete: bool = True

    def counts(self) -> dict[str, int]:
        return {"payloads": self.payloads, "messages": self.messages,
                "attempts": self.attempts, "audit": self.audit,
                "notifications": self.notifications}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Due:
    """What a run would remove now: payloads it would drop (of messages it would not
    delete) and messages it would delete."""

    payloads: int
    messages: int


def purge(retention: Retention, *, now: dt.datetime | None = None, batch: int = PURGE_BATCH,
          budget: float | None = None) -> Removed:
    """Delete the ended messages past ``retention.rows`` (with their attempts and audit),
    then drop the payloads of those past ``retention.payload``. Rows go first: a payload
    dropped from a row about to be deleted would be written for nothing.

    ``budget``: seconds after which no new batch starts (None: until done).
    """
    now = now or utcnow()
    deadline = None if budget is None else time.monotonic() + budget
    removed = Removed()
    row_cutoff, payload_cutoff = now - retention.rows, now - retention.payload
    for index in (_PURGED, _KEPT):
        if not _delete_rows(index, row_cutoff, batch, deadline, removed):
            removed.complete = False
            return removed
    removed.complete = _drop_payloads(payload_cutoff, now, batch, deadline, removed)
    return removed


def due(retention: Retention, *, now: dt.datetime | None = None) -> Due:
    """What ``purge`` would remove now, counted through the same indexes; nothing changes."""
    now = now or utcnow()
    row_cutoff, payload_cutoff = now - retention.rows, now - retention.payload
    count = select(func.count()).select_from(MESSAGES)
    with db_errors(), get_engine().connect() as conn:
        messages = sum(conn.execute(count.where(index, _ENDED, _m.updated_at < row_cutoff, _TOLD))
                       .scalar_one() for index in (_PURGED, _KEPT))
        payloads = conn.execute(count.where(_KEPT, _m.updated_at < payload_cutoff,
                                            _m.updated_at >= row_cutoff)).scalar_one()
    return Due(payloads=int(payloads), messages=int(messages))


def _out_of_time(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _oldest(conn: Connection, where: Sequence[Condition], batch: int) -> list[Any]:
    """The oldest ``batch`` ended messages matching ``where``, locked on PostgreSQL (a
    replay racing for one waits, then finds it gone; one already locked is skipped, for
    the next batch). SQLite renders no FOR UPDATE: there the first write of the batch
    takes the database's write lock, and each statement checks ``where`` again."""
    query = (select(_m.id, _m.size_bytes).where(*where).order_by(_m.updated_at).limit(batch)
             .with_for_update(skip_locked=True))
    return list(conn.execute(query))


def _delete_rows(index: Condition, cutoff: dt.datetime, batch: int,
                 deadline: float | None, removed: Removed) -> bool:
    """Delete the messages in ``index`` that ended before ``cutoff``, their attempts and
    audit first (the attempts' foreign key); True when none is left."""
    where = (index, _ENDED, _m.updated_at < cutoff, _TOLD)
    while not _out_of_time(deadline):
        with db_errors(), get_engine().begin() as conn:
            rows = _oldest(conn, where, batch)
            # Rows that still hold their payload: as short a transaction as a payload batch.
            ids = _within_bytes(rows) if index is _KEPT else [row.id for row in rows]
            if ids:
                still = select(_m.id).where(_m.id.in_(ids), *where)
                removed.attempts += conn.execute(
                    delete(ATTEMPTS).where(ATTEMPTS.c.message_id.in_(still))).rowcount
                removed.audit += conn.execute(
                    delete(AUDIT).where(AUDIT.c.message_id.in_(still))).rowcount
                removed.notifications += conn.execute(
                    delete(NOTIFICATIONS).where(_n.message_id.in_(still))).rowcount
                removed.messages += conn.execute(
                    delete(MESSAGES).where(_m.id.in_(ids), *where)).rowcount
        if len(rows) < batch and len(ids) == len(rows):
            return True
    return False


def _drop_payloads(cutoff: dt.datetime, now: dt.datetime, batch: int, deadline: float | None,
                   removed: Removed) -> bool:
    """Drop the payloads of the messages that ended before ``cutoff`` and still hold one;
    True when none is left. The row keeps its ``updated_at``: its own retention still
    counts from when it ended."""
    where = (_KEPT, _m.updated_at < cutoff)
    while not _out_of_time(deadline):
        with db_errors(), get_engine().begin() as conn:
            rows = _oldest(conn, where, batch)
            taken = _within_bytes(rows)
            if taken:
                removed.payloads += conn.execute(
                    update(MESSAGES).where(_m.id.in_(taken), *where)
                    .values(payload=None, payload_purged_at=now)).rowcount
        if len(rows) < batch and len(taken) == len(rows):
            return True
    return False


def _within_bytes(rows: Sequence[Any]) -> list[str]:
    """The ids of the first rows whose sizes add up to PURGE_BATCH_BYTES (one at least)."""
    taken: list[str] = []
    total = 0
    for row in rows:
        total += row.size_bytes or 0
        if taken and total > PURGE_BATCH_BYTES:
            break
        taken.append(row.id)
    return taken
