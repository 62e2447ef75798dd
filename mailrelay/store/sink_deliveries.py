"""What the sink provider "delivered": one row per send, with the raw MIME message.

The sink adapter records and looks up through these two functions, so that no provider
writes the store's tables itself.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from sqlalchemy import insert, select

from mailrelay.store.db import get_engine
from mailrelay.store.models import SINK_DELIVERIES
from mailrelay.store.outbox import utcnow


def record(*, message_id: str, rfc822_message_id: str, sender: str, envelope: list[str],
           raw: bytes) -> str:
    """Store one delivery; its id."""
    delivery_id = str(uuid.uuid4())
    with get_engine().begin() as conn:
        conn.execute(insert(SINK_DELIVERIES).values(
            id=delivery_id, message_id=message_id, rfc822_message_id=rfc822_message_id,
            sender=sender, envelope=json.dumps(envelope), size_bytes=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(), raw=raw, delivered_at=utcnow()))
    return delivery_id


def find(rfc822_message_id: str) -> str | None:
    """The id of a delivery of this Message-ID, if there is one."""
    with get_engine().connect() as conn:
        found = conn.execute(select(SINK_DELIVERIES.c.id)
                             .where(SINK_DELIVERIES.c.rfc822_message_id == rfc822_message_id)
                             .limit(1)).scalar()
    return str(found) if found else None
