"""The outbox's side of the reconciler: which messages no task will pick up any more,
and marking them re-enqueued, on the database's clock.

Stranded, once untouched long enough to be sure (``updated_at``, which the reconciler's
own mark moves, so a message is re-enqueued at most once per window):
- ``queued`` for MAILRELAY_RECONCILE_AFTER (its task was lost);
- ``retrying`` and due, parked for as long (a wait too long for a Celery countdown);
- ``sending`` whose lease has expired (its worker died), for a lease's length: the lease
  ending already proves nobody holds it, so this case does not wait the long window.

The mark is a conditional UPDATE with the same test, so a message sent, failed or
claimed since it was found is left alone: its ``updated_at`` stays what its transition
set (a failed message's failure time orders `mailrelay failed`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, or_, select, update

from mailrelay.store.db import db_errors, db_now, get_engine
from mailrelay.store.models import AUDIT, MESSAGES
from mailrelay.store.states import State

_m = MESSAGES.c


@dataclass(frozen=True)
class Found:
    message_id: str
    state: str
    provider: str


def _stranded(now: dt.datetime, after: dt.timedelta, lease: dt.timedelta) -> Any:
    return or_(
        and_(_m.state == State.QUEUED.value, _m.updated_at < now - after),
        and_(_m.state == State.RETRYING.value, _m.next_attempt_at <= now,
             _m.updated_at < now - after),
        and_(_m.state == State.SENDING.value, _m.lease_expires_at < now,
             _m.updated_at < now - lease),
    )


def find(*, after: dt.timedelta, lease: dt.timedelta, limit: int,
         now: dt.datetime | None = None) -> tuple[dt.datetime, list[Found]]:
    """The clock used and up to ``limit`` stranded messages, longest untouched first."""
    pending = [State.QUEUED.value, State.RETRYING.value, State.SENDING.value]
    with db_errors(), get_engine().connect() as conn:
        now = now or db_now(conn)
        rows = conn.execute(select(_m.id, _m.state, _m.provider)
                            .where(_m.state.in_(pending), _stranded(now, after, lease))
                            .order_by(_m.updated_at).limit(limit)).all()
    return now, [Found(row.id, row.state, row.provider) for row in rows]


def mark(found: list[Found], *, now: dt.datetime, after: dt.timedelta,
         lease: dt.timedelta) -> list[Found]:
    """Stamp and audit those of ``found`` that are still stranded; the ones marked."""
    if not found:
        return []
    by_id = {f.message_id: f for f in found}
    with db_errors(), get_engine().begin() as conn:
        stamp = db_now(conn) if conn.dialect.name == "postgresql" else dt.datetime.now(dt.UTC)
        marked = conn.execute(update(MESSAGES)
                              .where(_m.id.in_(list(by_id)), _stranded(now, after, lease))
                              .values(updated_at=stamp).returning(_m.id)).scalars().all()
        if marked:
            conn.execute(insert(AUDIT), [
                {"message_id": mid, "at": stamp, "actor": "reconciler", "action": "reconcile",
                 "from_state": by_id[mid].state, "to_state": by_id[mid].state,
                 "reason": "re-enqueued: no task would pick it up"} for mid in marked])
    return [by_id[mid] for mid in marked]
