"""How mailrelay's queues are declared on each broker, and the countdowns both accept.

Redis: a queue is a list; nothing to choose.

RabbitMQ: every queue is a quorum queue, declared with its arguments by whoever
publishes or consumes through mailrelay's app (never created on the fly as classic):
- ``x-queue-type: quorum``: replicated and durable; a message survives a broker restart.
- ``x-delivery-limit``: a message redelivered more often (a pool child killed with it,
  ``task_reject_on_worker_lost``, a channel closed with it unacked) is dead-lettered,
  not handed out forever. RabbitMQ 3.10 sets no limit; 4.x sets 20 and drops what
  passes it unless a dead-letter exchange is named, so mailrelay names one:
- ``x-dead-letter-exchange: mailrelay.dead``, a fanout exchange into the quorum queue
  ``mailrelay.dead``, which no worker consumes: what lands there stays for on-call
  (`mailrelay queues`, the queue depth metric). A delivery's message is still in the
  outbox, and the reconciler sends it again once its lease or wait runs out; an intake
  task (``mailrelay.send``) is the request itself, stored nowhere else until intake takes
  it (runbooks/alerts/MailrelayDeadLettered.md). The control queue has no dead-letter
  exchange: its jobs expire by design.
- The queues hang off the topic exchange ``mailrelay``: Celery's native delayed delivery,
  which it switches on when it sees quorum queues, forwards a countdown task through
  topic exchanges only (with a direct exchange the worker would hold the task, and its
  prefetch slot, until it is due). Native delays count whole seconds; ``whole_seconds``
  rounds every countdown up, on both brokers.

A producer without mailrelay publishes to the default exchange with a queue it does not
declare (README, "Sending"): the one form that works on both brokers.
"""

from __future__ import annotations

import math
import re
from typing import Any

from kombu.entity import Exchange, Queue

from mailrelay.config import is_amqp

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "EXCHANGE",
    "dead_letter_queue",
    "declare_dead_letters",
    "declared",
    "is_amqp",
    "queue_of",
    "whole_seconds",
]

EXCHANGE = "mailrelay"
DEAD_LETTER_EXCHANGE = "mailrelay.dead"
DEAD_LETTER_QUEUE = "mailrelay.dead"
# Native delayed delivery prefixes a routing key with the delay's bits ("1.0.1. ... .").
_DELAY_PREFIX = re.compile(r"^(?:[01]\.)+")


def declared(name: str, *, amqp: bool, delivery_limit: int, dead_letters: bool = True) -> Any:
    """The kombu Queue of one of mailrelay's queues, as this broker needs it declared.

    ``dead_letters=False`` for the control queue: beat's jobs carry ``expires``, which
    Celery turns into a per-message TTL on RabbitMQ, and an expired job must simply go
    (beat sends the next one), not land in ``mailrelay.dead`` and page someone."""
    if not amqp:
        return Queue(name, routing_key=name)
    arguments: dict[str, object] = {"x-queue-type": "quorum", "x-delivery-limit": delivery_limit}
    if dead_letters:
        arguments["x-dead-letter-exchange"] = DEAD_LETTER_EXCHANGE
    return Queue(name, Exchange(EXCHANGE, type="topic", durable=True), routing_key=name,
                 durable=True, queue_arguments=arguments)


def dead_letter_queue() -> Any:
    """Where RabbitMQ puts a message over its delivery limit (no limit of its own)."""
    return Queue(DEAD_LETTER_QUEUE, Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True),
                 routing_key=DEAD_LETTER_QUEUE, durable=True,
                 queue_arguments={"x-queue-type": "quorum"})


def declare_dead_letters(connection: Any) -> None:
    """Declare the dead-letter exchange and queue (idempotent): before any message can
    pass its limit, or RabbitMQ would dead-letter it into an exchange that is not there,
    which drops it."""
    dead_letter_queue()(connection.default_channel).declare()


def queue_of(routing_key: str) -> str:
    """The queue a delivered task came through, from its routing key: a task that waited
    in native delayed delivery carries the delay's bits before the queue's name."""
    return _DELAY_PREFIX.sub("", routing_key)


def whole_seconds(countdown: float | None) -> int | None:
    """A countdown as RabbitMQ's native delayed delivery takes it: whole seconds, rounded
    up (Celery refuses a positive countdown under 1 s there); None or 0 for no wait."""
    if countdown is None or countdown <= 0:
        return None
    return math.ceil(countdown)
