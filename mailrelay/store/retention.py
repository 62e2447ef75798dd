"""Forgetting idempotency keys after MAILRELAY_IDEMPOTENCY_RETENTION.

A key is unique per account (uq_messages_account_idempotency): while it is remembered, a
request with the same key is the earlier message (or a conflict). After the retention, a
finished message lets go of its key so that the producer may use it again; the message
and its history stay. A message still in flight keeps its key whatever its age.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import MESSAGES
from mailrelay.store.outbox import utcnow
from mailrelay.store.states import FINAL

BATCH = 1000


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
