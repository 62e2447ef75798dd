"""The benchmark's baselines: bare Celery tasks doing what intake and delivery do at the
least.

``bare`` makes the same provider call as delivery.

No outbox, no claim, no attempt rows, no token cache: parse the message, send it through
the provider adapter with a given access token. ``mailrelay bench`` compares
``mailrelay.deliver`` against this on the same pool. It refuses to run unless the
provider is the sink or an emulator on this machine, so it cannot be used to send real
mail around the outbox.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mailrelay import broker_queues, providers
from mailrelay.celery_app import app
from mailrelay.config import get_settings
from mailrelay.message import validate
from mailrelay.providers.base import Outbound
from mailrelay.tasks.base import MailrelayTask

BENCH_TASK = "mailrelay.bench_bare"
BENCH_INTAKE_TASK = "mailrelay.bench_intake_bare"
# Where the intake baseline routes its messages; nothing consumes it (the bench purges it).
# Not one of the app's queues: the baseline declares it as it publishes.
BENCH_HOLD_QUEUE = "mailrelay.bench"


@dataclass
class StaticToken:
    token: str

    def get(self) -> str:
        return self.token

    def renew(self, rejected: str) -> str:
        return self.token


def _local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.task(name=BENCH_TASK, base=MailrelayTask, bind=True)
def bare(self: MailrelayTask, message_id: str, rfc822_message_id: str, payload: dict[str, Any],
         provider: str = "sink", access_token: str = "") -> None:
    if provider != "sink" and not (provider == "gmail" and _local(get_settings().gmail_api_url)):
        raise ValueError("the bench task only sends to the sink or an emulator on this machine")
    message = validate(payload, max_message_bytes=None, max_recipients=2**31)
    out = Outbound(message=message, message_id=message_id, rfc822_message_id=rfc822_message_id,
                   date=dt.datetime.now(dt.UTC), attempt_number=1)
    providers.get(provider).send(out, StaticToken(access_token) if access_token else None)


@app.task(name=BENCH_INTAKE_TASK, base=MailrelayTask, bind=True, ignore_result=False)
def intake_bare(self: MailrelayTask, message: Any = None) -> dict[str, Any]:
    """Intake's baseline on the intake worker: a task given the same message that neither
    validates nor stores it, only routes a task with an id on, and answers as intake does."""
    app.send_task(BENCH_TASK, kwargs={"message_id": self.request.id}, queue=_hold_queue(),
                  kwargsrepr=repr({"message_id": self.request.id}), argsrepr="()")
    return {"id": self.request.id, "state": "queued", "error_code": None}


def _hold_queue() -> Any:
    settings = get_settings()
    return broker_queues.declared(BENCH_HOLD_QUEUE, amqp=broker_queues.is_amqp(settings.broker_url),
                                  delivery_limit=settings.delivery_limit)
