"""Publishing an outcome task to the producer's queue: the one place that does it.

The queue is the producer's: it is named, never declared (``no_declare``), through the
broker's default exchange, so whatever the producer declared (a quorum queue, a classic
one, a Redis list) takes it as it is. On RabbitMQ the publish is ``mandatory`` and
confirmed: a queue that does not exist returns it (``queue_not_found``) instead of the
broker dropping it silently, and the publish returns only once the broker has it.
"""

from __future__ import annotations

import uuid

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from kombu.entity import Queue

from mailrelay import broker_queues
from mailrelay.celery_app import app
from mailrelay.config import get_settings
from mailrelay.notify import BROKER_UNAVAILABLE, PUBLISH_FAILED, QUEUE_NOT_FOUND, PublishError
from mailrelay.store.notifications import Pending

# The outcome task's id is derived from what a producer deduplicates on, so a
# notification published twice arrives with the same task id both times.
_IDS = uuid.UUID("6f1d9a52-3c1e-4d8b-9f57-2a0c5e7b8d41")
_NO_ROUTE = 312
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
# Seconds RabbitMQ may take to confirm a publish (a memory or disk alarm blocks publishers).
CONFIRM_TIMEOUT = 10.0
# Connection-level failures; channel errors other than NO_ROUTE are the broker's refusal.
_UNAVAILABLE = (kombu.exceptions.OperationalError, redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError, ConnectionError, TimeoutError, OSError,
                amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError)


def task_id(kwargs: dict[str, object]) -> str:
    return str(uuid.uuid5(_IDS, f"{kwargs['id']}:{kwargs['state']}:{kwargs['replays']}"))


def publish_outcome(pending: Pending) -> None:
    """Publish one notification; PublishError with a stable code when the broker did not
    take it."""
    amqp_broker = broker_queues.is_amqp(get_settings().broker_url)
    kwargs = pending.kwargs
    try:
        app.send_task(pending.task, kwargs=kwargs, task_id=task_id(kwargs),
                      queue=Queue(pending.queue, no_declare=True),  # type: ignore[no-untyped-call]
                      routing_key=pending.queue,
                      # Ids only in the headers Flower and `celery events` show: the
                      # metadata is the producer's and stays in the body.
                      argsrepr="()", kwargsrepr=repr({"id": kwargs["id"], "state": kwargs["state"],
                                                      "replays": kwargs["replays"]}),
                      # One retry on a broken connection, then the reconciler's turn: a
                      # publish never holds a worker or the reconciler for long.
                      retry_policy=RETRY_POLICY,
                      **({"mandatory": True, "timeout": CONFIRM_TIMEOUT,
                          "confirm_timeout": CONFIRM_TIMEOUT} if amqp_broker else {}))
    except amqp.exceptions.ChannelError as err:
        if getattr(err, "reply_code", None) == _NO_ROUTE:
            raise PublishError(QUEUE_NOT_FOUND, pending.queue) from err
        raise PublishError(PUBLISH_FAILED, type(err).__name__) from err
    except _UNAVAILABLE as err:
        raise PublishError(BROKER_UNAVAILABLE, type(err).__name__) from err
