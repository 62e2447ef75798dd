"""Putting a delivery on its provider's queue: the one place that calls apply_async for it."""

from __future__ import annotations

from mailrelay import broker_queues, providers
from mailrelay.celery_app import DELIVER_TASK, app


def enqueue_delivery(message_id: str, provider: str, countdown: float | None = None) -> None:
    app.send_task(DELIVER_TASK, kwargs={"message_id": message_id},
                  queue=providers.queue_for(provider),
                  countdown=broker_queues.whole_seconds(countdown),
                  kwargsrepr=repr({"message_id": message_id}), argsrepr="()")
