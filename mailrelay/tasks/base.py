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

from mailrelay.celery_app import REDACTED_KWARGS
from mailrelay.errors import TransientInfraError
from mailrelay.logctx import get_logger, log_context
from mailrelay.metrics import TASK_RETRIES, TASK_SECONDS

log = get_logger(__name__)

INFRA_RETRY_CAP = 60.0


class RedactedRequest(Request):  # type: ignore[misc]
    """Worker-side request whose repr shows no message content.

    Producers using plain ``send_task`` put ``repr(kwargs)`` in the task headers; the
    worker forwards those to events (Flower) and logs. This replaces them with ids.
    """

    @property
    def argsrepr(self) -> str:
        return "()"

    @property
    def kwargsrepr(self) -> str:
        return REDACTED_KWARGS


class MailrelayTask(Task):  # type: ignore[misc]
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    # Infrastructure retries are bounded by time (~1 h of capped waits), not by giving up
    # on the message: a message is never failed because mailrelay's database was away.
    max_retries = 80

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        queue = (self.request.delivery_info or {}).get("routing_key") or "direct"
        started = time.perf_counter()
        with log_context(task=self.name, task_id=self.request.id,
                         message_id=kwargs.get("message_id")):
            try:
                return super().__call__(*args, **kwargs)
            except TransientInfraError as err:
                TASK_RETRIES.labels(queue=queue, code=err.code).inc()
                countdown = random.uniform(0, min(INFRA_RETRY_CAP, 2.0 ** self.request.retries))  # noqa: S311
                log.warning("%s; task retried in %.1fs", err, countdown)
                # The re-published task gets ids-only reprs too (events are built from them).
                raise self.retry(exc=err, countdown=countdown, argsrepr="()",
                                 kwargsrepr=self.redacted_kwargs(kwargs)) from err
            finally:
                TASK_SECONDS.labels(queue=queue).observe(time.perf_counter() - started)

    def redacted_kwargs(self, kwargs: dict[str, Any]) -> str:
        """What logs and events may show of a call: ids, never a message."""
        return repr({k: (v if k == "message_id" else "<redacted>") for k, v in kwargs.items()})

    @property
    def worker_name(self) -> str:
        return f"{self.request.hostname or 'local'}/{os.getpid()}"
