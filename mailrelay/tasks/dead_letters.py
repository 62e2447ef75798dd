"""What RabbitMQ moved to ``mailrelay.dead`` (tasks over their delivery limit), and putting
it back where it came from.

A dead-lettered ``mailrelay.deliver`` names a message that is still in the outbox (the
reconciler would send it again anyway); a dead-lettered ``mailrelay.send`` is a producer's
request that intake never stored, so it exists nowhere else: on-call puts it back once
the cause is fixed, never purges it blindly. What is shown of each is what ``celery
inspect`` shows: the task's name and id, a delivery's message id, never a request's
content.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mailrelay import broker_queues
from mailrelay.celery_app import app
from mailrelay.config import get_settings

# At most this many are read or moved per command (a run again takes the rest).
BATCH = 10_000


@dataclass(frozen=True)
class DeadTask:
    task: str
    task_id: str
    queue: str  # where it died, and where a requeue puts it
    reason: str
    message_id: str | None  # a delivery's outbox message; None for a request

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "task_id": self.task_id, "queue": self.queue,
                "reason": self.reason, "message_id": self.message_id}


def available() -> bool:
    """Only RabbitMQ dead-letters; Redis has no such queue."""
    return broker_queues.is_amqp(get_settings().broker_url)


def listed(limit: int = BATCH) -> list[DeadTask]:
    """The dead-lettered tasks, oldest first; all of them stay where they are (leaving
    without an ack returns every message to the queue)."""
    with _dead_messages(limit) as messages:
        return [_described(message) for message in messages]


def requeue(limit: int = BATCH) -> list[DeadTask]:
    """Put each dead-lettered task back on the queue it died in (its delivery count starts
    again); what was moved."""
    moved = []
    with app.connection_for_write() as connection, connection.Producer() as producer, \
            _dead_messages(limit) as messages:
        for message in messages:
            dead = _described(message)
            headers = {key: value for key, value in (message.headers or {}).items()
                       if not key.startswith("x-")}  # RabbitMQ's death records stay behind
            producer.publish(message.body, exchange="", routing_key=dead.queue,
                             headers=headers, content_type=message.content_type,
                             content_encoding=message.content_encoding, delivery_mode=2,
                             correlation_id=message.properties.get("correlation_id"),
                             reply_to=message.properties.get("reply_to"), retry=True)
            message.ack()  # only once the broker confirmed the copy (confirm_publish)
            moved.append(dead)
    return moved


@contextmanager
def _dead_messages(limit: int) -> Iterator[list[Any]]:
    with app.connection_for_write() as connection:
        broker_queues.declare_dead_letters(connection)
        channel = connection.channel()
        try:
            queue = broker_queues.dead_letter_queue()(channel)
            messages: list[Any] = []
            while len(messages) < limit:
                message = queue.get(no_ack=False)
                if message is None:
                    break
                messages.append(message)
            yield messages
        finally:
            channel.close()  # what was not acknowledged goes back to mailrelay.dead


def _described(message: Any) -> DeadTask:
    headers = message.headers or {}
    deaths = headers.get("x-death") or [{}]
    queue = str(headers.get("x-first-death-queue") or deaths[0].get("queue") or "")
    reason = str(headers.get("x-first-death-reason") or deaths[0].get("reason") or "")
    task = str(headers.get("task", ""))
    message_id = None
    if task != "mailrelay.send":  # a request's body is its content: never read here
        message_id = _message_id(message.body)
    return DeadTask(task=task, task_id=str(headers.get("id", "")), queue=queue, reason=reason,
                    message_id=message_id)


def _message_id(body: Any) -> str | None:
    try:
        _args, kwargs, _embed = json.loads(body)
        found = kwargs.get("message_id")
    except (ValueError, TypeError, AttributeError):
        return None
    return str(found) if found is not None else None
