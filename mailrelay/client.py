"""The producer API: send a message from Python.

``send`` validates, persists and routes in-process and returns the message id: the
caller learns at once whether the request was accepted (``state``) and can look it up
later with ``status``. ``send_async`` only publishes a ``mailrelay.send`` task, exactly what a producer
without mailrelay installed does with::

    celery_app.send_task("mailrelay.send", kwargs={"message": {...}}, queue="mailrelay.intake")
"""

from __future__ import annotations

import uuid
from typing import Any

from celery.result import AsyncResult

from mailrelay import notify
from mailrelay.celery_app import INTAKE_QUEUE, REDACTED_KWARGS, SEND_TASK, app
from mailrelay.intake import take_in
from mailrelay.store import outbox
from mailrelay.store.outbox import IntakeResult
from mailrelay.tasks.outcomes import publish_outcome
from mailrelay.tasks.routing import enqueue_delivery


class NotEnqueued(Exception):
    """The message is stored and ``queued``, but its delivery task could not be published
    (the broker is away). Nothing is lost: the reconciler on beat enqueues it once it has
    sat untouched for MAILRELAY_RECONCILE_AFTER. ``result`` is the stored result; the
    broker's error is ``__cause__``. Retrying the call with the same ``request_id`` (or
    idempotency key) returns this message, not a second one."""

    def __init__(self, result: IntakeResult) -> None:
        self.result = result
        super().__init__(f"message {result.message_id} is stored and queued, but its delivery "
                         "could not be enqueued; the reconciler will enqueue it")


def submit(message: dict[str, Any], *, request_id: str | None = None,
           actor: str = "client") -> IntakeResult:
    """Validate, persist and route ``message``; return the stored result (id, state, code).

    A rejected message is stored too and returned with its ``error_code``; nothing raises
    for bad input. ``request_id`` makes a retried call return the first result. Raises
    ``NotEnqueued`` (carrying the result) when the message is stored but the broker is away.
    """
    accepted = take_in(message, request_id=request_id or f"client:{uuid.uuid4()}", actor=actor)
    # A rejection that asked to be told (never raises: the reconciler has it otherwise).
    notify.publish(accepted.result.notification, publish_outcome)
    if accepted.should_route and accepted.provider:
        try:
            enqueue_delivery(accepted.result.message_id, accepted.provider)
        except Exception as err:  # any failure to publish: the row is stored, the reconciler sends it
            raise NotEnqueued(accepted.result) from err
    return accepted.result


def status(message_id: str) -> dict[str, Any] | None:
    """What `mailrelay status ID --json` prints, as a dict: ``id``, ``state``, ``error_code``,
    ``error_detail``, ``provider``, ``attempts`` (oldest first), ``history`` and the rest;
    never the message's content. None if no message has that id."""
    return outbox.status(message_id)


def send(message: dict[str, Any], *, request_id: str | None = None) -> str:
    """Like ``submit``, returning only the message id."""
    return submit(message, request_id=request_id).message_id


def send_async(message: dict[str, Any]) -> AsyncResult:
    """Publish a ``mailrelay.send`` task; its result is ``{"id", "state", "error_code"}``."""
    # Ids-only reprs, for the headers and the task-sent event alike (celery_app's
    # RedactingAMQP sets the same for any mailrelay.send published through the app).
    return app.send_task(SEND_TASK, kwargs={"message": message}, queue=INTAKE_QUEUE,
                         argsrepr="()", kwargsrepr=REDACTED_KWARGS)
