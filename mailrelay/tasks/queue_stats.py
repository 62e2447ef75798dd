"""Each mailrelay queue's length and consumers, as the broker and the workers tell them.

Lengths come from the broker: Redis keeps a queue as a list (one per priority step, all
summed), RabbitMQ answers a passive declare. Consumers come from the workers themselves
(``inspect().active_queues()``, one broadcast with a short timeout), the same way on both
brokers: Redis has no notion of a consumer, and a worker stopped with SIGSTOP still
holds its RabbitMQ channel but does not answer.
"""

from __future__ import annotations

import contextlib
from typing import Any

from mailrelay import broker_queues
from mailrelay.celery_app import app, queue_names
from mailrelay.config import get_settings
from mailrelay.export import QueueStats

# The broadcast always waits this long, and the control worker runs one job at a time
# (solo pool): the export must leave room for the reconciler and the controller. A
# worker answering later reads as no consumer once; the alert waits minutes.
INSPECT_TIMEOUT = 1.0
# kombu's Redis transport keeps priority p > 0 of queue q in the list "q\x06\x16p".
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITY_STEPS = (3, 6, 9)


def read() -> dict[str, QueueStats]:
    """Every mailrelay queue's stats (on RabbitMQ, the dead-letter queue's too); a broker
    failure raises (the export pushes nothing)."""
    names = queue_names()
    if broker_queues.is_amqp(get_settings().broker_url):
        names.append(broker_queues.DEAD_LETTER_QUEUE)
    counts = lengths(names)
    consumers = _consumers()
    return {queue: QueueStats(counts[queue], consumers.get(queue, 0)) for queue in counts}


def lengths(queues: list[str]) -> dict[str, int]:
    """Messages waiting in each queue, as the broker counts them."""
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        if connection.transport.driver_type == "redis":
            return _redis_lengths(connection, queues)
        return _amqp_lengths(connection, queues)


def _redis_lengths(connection: Any, queues: list[str]) -> dict[str, int]:
    client = connection.default_channel.client
    pipe = client.pipeline(transaction=False)
    keys = {queue: [queue, *(f"{queue}{_REDIS_PRIORITY_SEPARATOR}{step}"
                             for step in _REDIS_PRIORITY_STEPS)] for queue in queues}
    for names in keys.values():
        for key in names:
            pipe.llen(key)
    counts = iter(pipe.execute())
    return {queue: sum(next(counts) for _ in names) for queue, names in keys.items()}


def _amqp_lengths(connection: Any, queues: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for queue in queues:
        # A passive declare of a missing queue closes the channel: one channel per queue.
        channel = connection.channel()
        try:
            _name, count, _consumers = channel.queue_declare(queue=queue, passive=True)
            found[queue] = int(count)
        except Exception as err:  # not declared yet: nothing waits in it
            if "NOT_FOUND" not in str(err) and "404" not in str(err):
                raise
            found[queue] = 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()
    return found


def _consumers() -> dict[str, int]:
    replies = app.control.inspect(timeout=INSPECT_TIMEOUT).active_queues() or {}
    counts: dict[str, int] = {}
    for queues in replies.values():
        for queue in queues or ():
            name = str(queue.get("name", ""))
            counts[name] = counts.get(name, 0) + 1
    return counts
