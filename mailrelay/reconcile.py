"""The reconciler: re-enqueue every message that no task will pick up any more.

The broker is only transport. A message stays unsent if its task was lost (Redis
restarted empty, a publish failed after the commit), if its retry wait was too long for
a Celery countdown (parked in ``next_attempt_at``), or if the worker holding its lease
died. Every minute, beat runs this on ``mailrelay.control``; it re-enqueues messages
untouched for MAILRELAY_RECONCILE_AFTER seconds that are

- ``queued``;
- ``retrying`` and due;
- ``sending`` with an expired lease (the claim that follows asks the provider first).

Re-enqueueing is always safe: the claim decides who sends, and a second task for the same
message finds it claimed or finished and does nothing. Each re-enqueued message is
touched (``updated_at``) and audited, so it is re-enqueued at most once per window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, insert, or_, select, update

from mailrelay.config import get_settings
from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import AUDIT, MESSAGES
from mailrelay.store.outbox import utcnow
from mailrelay.store.states import State

BATCH = 500


@dataclass(frozen=True)
class Found:
    message_id: str
    state: str
    provider: str


def stranded(now: dt.datetime, after: dt.timedelta, limit: int = BATCH) -> list[Found]:
    m = MESSAGES.c
    due = or_(
        m.state == State.QUEUED.value,
        and_(m.state == State.RETRYING.value, m.next_attempt_at <= now),
        and_(m.state == State.SENDING.value, m.lease_expires_at < now),
    )
    query = (select(m.id, m.state, m.provider)
             .where(m.state.in_([State.QUEUED.value, State.RETRYING.value, State.SENDING.value]),
                    m.updated_at < now - after, due)
             .order_by(m.updated_at).limit(limit))
    with db_errors(), get_engine().connect() as conn:
        return [Found(row.id, row.state, row.provider) for row in conn.execute(query)]


def reconcile(enqueue: Callable[[str, str], None], *, now: dt.datetime | None = None,
              limit: int = BATCH) -> int:
    """Re-enqueue what is stranded; return how many. ``enqueue(id, provider)`` publishes.

    ``now`` is the moment judged by (tests move it); what is written is stamped with the clock.
    """
    found = stranded(now or utcnow(), dt.timedelta(seconds=get_settings().reconcile_after), limit)
    for item in found:  # publish first: a crash here leaves them found again next time
        enqueue(item.message_id, item.provider)
    if not found:
        return 0
    stamp = utcnow()
    with db_errors(), get_engine().begin() as conn:
        conn.execute(update(MESSAGES).where(MESSAGES.c.id.in_([f.message_id for f in found]))
                     .values(updated_at=stamp))
        conn.execute(insert(AUDIT), [
            {"message_id": f.message_id, "at": stamp, "actor": "reconciler", "action": "reconcile",
             "from_state": f.state, "to_state": f.state,
             "reason": "re-enqueued: no task would pick it up"} for f in found])
    return len(found)
