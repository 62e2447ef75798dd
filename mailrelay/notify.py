"""Telling producers how their messages ended: the outcome task, published at least once.

The obligation is written with the final state (store/notifications.py). The process that
wrote it publishes right after the commit (``publish``); when that fails (the broker is
away, the producer's queue does not exist yet) or the process dies first, the reconciler
publishes it once it is due (``republish_due``). A notification is marked published only
after the broker accepted the task (publisher confirms on RabbitMQ, with ``mandatory``: a
queue nobody declared refuses it instead of dropping it), so it can be published twice
(a crash between the publish and the mark) but never be lost. Producers deduplicate on
``id`` + ``state`` + ``replays`` (the task id is derived from them too).

This module knows nothing of Celery: the tasks layer passes the function that publishes.
Nothing here logs a kwarg: ids and codes only, and no metadata.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from mailrelay.config import get_settings
from mailrelay.errors import MailrelayError
from mailrelay.logctx import get_logger
from mailrelay.metrics import NOTIFICATIONS
from mailrelay.store import notifications
from mailrelay.store.notifications import Pending

log = get_logger(__name__)

# Stable codes of a failed publish (notifications.last_error, the metric's ``code``).
BROKER_UNAVAILABLE = "broker_unavailable"
QUEUE_NOT_FOUND = "queue_not_found"
PUBLISH_FAILED = "publish_failed"
BATCH = 200
# The reconciler's share of its run (it re-enqueues stranded messages first).
RUN_SECONDS = 5.0


class PublishError(Exception):
    """A publish the broker did not accept, with its stable code."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


Publisher = Callable[[Pending], None]


def _code(err: Exception) -> str:
    return err.code if isinstance(err, PublishError) else PUBLISH_FAILED


def _cause(err: Exception) -> str:
    """The exception behind a failed publish, by class name (never its text: it could
    quote a kwarg)."""
    inner = err.__cause__ if isinstance(err, PublishError) and err.__cause__ else err
    return type(inner).__name__


def _send(pending: Pending, send: Publisher) -> str | None:
    """Publish one notification, counting the result; the failure's code, or None."""
    try:
        send(pending)
    except Exception as err:  # every failure leaves it to the reconciler
        _failed(pending, _code(err), _cause(err))
        return _code(err)
    NOTIFICATIONS.labels(result="published", code="").inc()
    return None


def publish(pending: Pending | None, send: Publisher) -> bool:
    """Publish one notification and mark it; False when the broker did not take it (it
    stays pending for the reconciler). Never raises for the broker's sake or the
    database's: the outcome it reports is committed whatever happens here."""
    if pending is None:
        return True
    if _send(pending, send) is not None:
        return False
    try:
        notifications.mark_published([pending.id])
    except MailrelayError as err:
        # Published but not marked: the reconciler publishes it again (at least once).
        log.warning("outcome notification %s published but not marked (%s); it will be "
                    "published again", pending.id, err.code)
    return True


def _failed(pending: Pending, code: str, cause: str) -> None:
    NOTIFICATIONS.labels(result="failed", code=code).inc()
    log.warning("outcome notification %s of message %s to queue %s not published (%s, %s); "
                "the reconciler publishes it later", pending.id, pending.message_id,
                pending.queue, code, cause)
    # The database away too: still pending and due when it was; the reconciler takes it.
    with contextlib.suppress(MailrelayError):
        notifications.mark_failed(pending.id, code,
                                  retry_after=get_settings().notify_retry_after)


def republish_due(send: Publisher, *, limit: int = BATCH, seconds: float = RUN_SECONDS) -> int:
    """Publish the pending notifications that are due; how many the broker accepted.

    Each batch is taken with its rows put off (``take_due``), published, then marked in
    one statement. The run stops at the first ``broker_unavailable`` (the rest of the
    batch is due again after the hold) and after ``seconds``.
    """
    hold = get_settings().notify_retry_after
    ends = time.monotonic() + seconds
    total = 0
    while True:
        due = notifications.take_due(limit=limit, hold=hold)
        done: list[int] = []
        failure = None
        for pending in due:
            failure = _send(pending, send)
            if failure == BROKER_UNAVAILABLE:
                break
            if failure is None:
                done.append(pending.id)
        notifications.mark_published(done)
        total += len(done)
        if failure == BROKER_UNAVAILABLE or len(due) < limit or time.monotonic() > ends:
            return total
