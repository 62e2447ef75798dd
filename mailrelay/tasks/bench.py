"""The benchmark baseline: a bare Celery task making the same provider call as delivery.

No outbox, no claim, no attempt rows: parse the message, send it through the sink
adapter. ``mailrelay bench`` compares ``mailrelay.deliver`` against this on the same pool.
It refuses every provider but the sink, so it cannot be used to send real mail around
the outbox.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mailrelay import providers
from mailrelay.celery_app import app
from mailrelay.message import validate
from mailrelay.providers.base import Outbound
from mailrelay.tasks.base import MailrelayTask

BENCH_TASK = "mailrelay.bench_bare"


@app.task(name=BENCH_TASK, base=MailrelayTask, bind=True)
def bare(self: MailrelayTask, message_id: str, rfc822_message_id: str, payload: dict[str, Any]) -> None:
    message = validate(payload, max_message_bytes=None, max_recipients=2**31)
    out = Outbound(message=message, message_id=message_id, rfc822_message_id=rfc822_message_id,
                   date=dt.datetime.now(dt.UTC), attempt_number=1)
    providers.get("sink").send(out)
