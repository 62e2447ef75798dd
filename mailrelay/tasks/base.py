"""The task base class: logging context, timing, and the retry policy for infrastructure.

Provider failures never reach Celery's retry machinery: they are outcomes recorded in
the outbox (``retrying`` with ``next_attempt_at``). What this class retries is a failure
of mailrelay's own dependencies (``TransientInfraError``: the database away, say), with
the task unchanged and the message untouched, so nothing is marked failed for it.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from celery import Task
from celery.worker.request import Request

from mailrelay import broker_queues
from mailrelay.errors import TransientInfraError
from mailrelay.logctx import get_logger, log_context
from mailrelay.metrics import TASK_RETRIES, TASK_SECONDS

log = get_logger(__name__)

INFRA_RETRY_CAP = 60.0


# The only task arguments that logs, events, Flower and `celery inspect` may show: ids.
ID_ARGUMENTS = frozenset({"message_id"})
REDACTED = "<redacted>"
_ID_LIMIT = 64


def ids_only(args: Any, kwargs: Any) -> tuple[str, str]:
    """``(argsrepr, kwargsrepr)`` of a call showing ids and nothing else.

    Positional arguments and every keyword argument but an id become ``<redacted>``, so a
    task that is given a message (``mailrelay.send``), or a producer that puts one where it
    does not belong, shows no content. Non-empty, because Celery falls back to
    ``repr(kwargs)`` when a repr is empty.
    """
    shown_args = tuple(REDACTED for _ in args) if isinstance(args, list | tuple) else REDACTED
    if not isinstance(kwargs, dict):
        return repr(shown_args), repr(REDACTED)
    shown = {str(key)[:_ID_LIMIT]: (value if key in ID_ARGUMENTS and isinstance(value, str)
                                    and len(value) <= _ID_LIMIT else REDACTED)
             for key, value in kwargs.items()}
    return repr(shown_args), repr(shown)


class RedactedRequest(Request):  # type: ignore[misc]
    """Worker-side request that shows ids only, wherever Celery shows a request.

    Celery reads a request in two ways: the ``argsrepr``/``kwargsrepr`` headers, as the
    producer wrote them (``task-received`` events, ``repr``, the request context the pool
    child logs from: "Task ... received/succeeded/raised unexpected" and their ``data``);
    and the raw arguments, in ``info()``, which is what the control commands ``inspect
    active/reserved/scheduled/query_task`` (Flower's worker page, ``/api/workers``)
    return. The headers are replaced here, once, with ids-only reprs, whatever the
    producer sent, and ``info()`` always uses them. The task itself still gets its
    arguments: they travel in the body, which this does not touch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        argsrepr, kwargsrepr = ids_only(self._args, self._kwargs)
        self._argsrepr = self._request_dict["argsrepr"] = argsrepr
        self._kwargsrepr = self._request_dict["kwargsrepr"] = kwargsrepr

    def info(self, safe: bool = False) -> dict[str, Any]:
        return dict(super().info(safe=True))


class MailrelayTask(Task):  # type: ignore[misc]
    Request = "mailrelay.tasks.base:RedactedRequest"
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    # Infrastructure retries are bounded by time (~1 h of capped waits), not by giving up
    # on the message: a message is never failed because mailrelay's database was away.
    max_retries = 80

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        queue = broker_queues.queue_of((self.request.delivery_info or {}).get("routing_key")
                                       or "direct")
        started = time.perf_counter()
        with log_context(task=self.name, task_id=self.request.id,
                         message_id=kwargs.get("message_id")):
            try:
                return super().__call__(*args, **kwargs)
            except TransientInfraError as err:
                TASK_RETRIES.labels(queue=queue, code=err.code).inc()
                countdown = broker_queues.whole_seconds(random.uniform(  # noqa: S311
                    0, min(INFRA_RETRY_CAP, 2.0 ** self.request.retries)))
                log.warning("%s; task retried in %ss", err, countdown or 0)
                # The re-published task gets ids-only reprs too (events are built from them).
                argsrepr, kwargsrepr = ids_only(args, kwargs)
                # Back to the queue it came through, named: left to Celery, a retry reuses
                # the delivery's exchange and routing key, and with native delayed delivery
                # (RabbitMQ) that routing key is the delay's, so the countdown would be
                # computed for the default queue (mailrelay.control) and the task land there.
                retry_queue = queue if queue.startswith("mailrelay.") else None
                raise self.retry(exc=err, countdown=countdown, argsrepr=argsrepr,
                                 kwargsrepr=kwargsrepr, queue=retry_queue) from err
            finally:
                TASK_SECONDS.labels(queue=queue).observe(time.perf_counter() - started)

    @property
    def worker_name(self) -> str:
        return f"{self.request.hostname or 'local'}/{os.getpid()}"
