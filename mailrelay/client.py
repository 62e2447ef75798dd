"""The producer API: send a message from Python.

``send`` validates, persists and routes in-process and returns the message id: the
caller learns at once whether the request was accepted (``state``) and can look it up
later. ``send_async`` only publishes a ``mailrelay.send`` task, exactly what a producer
without mailrelay installed does with::

    celery_app.send_task("mailrelay.send", kwargs={"message": {...}}, queue="mailrelay.intake")
"""

from __future__ import annotations

import uuid
from typing import Any

from celery.result import AsyncResult

from mailrelay.celery_app import INTAKE_QUEUE, REDACTED_KWARGS, SEND_TASK, app
from mailrelay.intake import take_in
from mailrelay.store.outbox import IntakeResult
from mailrelay.tasks.routing import enqueue_delivery


def submit(message: dict[str, Any], *, request_id: str | None = None,
           actor: str = "client") -> IntakeResult:
    """Validate, persist and route ``message``; return the stored result (id, state, code).

    A rejected message is stored too and returned with its ``error_code``; nothing raises
    for bad input. ``request_id`` makes a retried call return the first result.
    """
    accepted = take_in(message, request_id=request_id or f"client:{uuid.uuid4()}", actor=actor)
    if accepted.should_route and accepted.provider:
        enqueue_delivery(accepted.result.message_id, accepted.provider)
    return accepted.result


def send(message: dict[str, Any], *, request_id: str | None = None) -> str:
    """Like ``submit``, returning only the message id."""
    return submit(message, request_id=request_id).message_id


def send_async(message: dict[str, Any]) -> AsyncResult:
    """Publish a ``mailrelay.send`` task; its result is ``{"id", "state", "error_code"}``."""
    # Ids-only reprs, for the headers and the task-sent event alike (celery_app's
    # RedactingAMQP sets the same for any mailrelay.send published through the app).
    return app.send_task(SEND_TASK, kwargs={"message": message}, queue=INTAKE_QUEUE,
                         argsrepr="()", kwargsrepr=REDACTED_KWARGS)
