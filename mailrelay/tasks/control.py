"""Periodic jobs on ``mailrelay.control``, scheduled by beat_schedule.py."""

from __future__ import annotations

from mailrelay.celery_app import app
from mailrelay.logctx import get_logger
from mailrelay.metrics import RECONCILED
from mailrelay.reconcile import reconcile as reconcile_once
from mailrelay.tasks.base import MailrelayTask
from mailrelay.tasks.routing import enqueue_delivery

RECONCILE_TASK = "mailrelay.reconcile"
EXPIRE_KEYS_TASK = "mailrelay.expire_idempotency_keys"
ROLLOUT_TASK = "mailrelay.rollout_evaluate"
log = get_logger(__name__)


@app.task(name=RECONCILE_TASK, base=MailrelayTask, bind=True)
def reconcile(self: MailrelayTask) -> int:
    count = reconcile_once(enqueue_delivery)
    if count:
        RECONCILED.inc(count)
        log.warning("re-enqueued %d stranded messages", count)
    return count


@app.task(name=EXPIRE_KEYS_TASK, base=MailrelayTask, bind=True)
def expire_idempotency_keys(self: MailrelayTask) -> int:
    import datetime as dt

    from mailrelay.config import get_settings
    from mailrelay.store.retention import expire_keys

    count = expire_keys(dt.timedelta(seconds=get_settings().idempotency_retention))
    if count:
        log.info("forgot %d idempotency keys past their retention", count)
    return count


@app.task(name=ROLLOUT_TASK, base=MailrelayTask, bind=True)
def rollout_evaluate(self: MailrelayTask) -> dict[str, str]:
    """One controller run over every rollout (see rollout/controller.py); provider → decision."""
    from mailrelay.rollout import controller

    return {result.provider: result.decision
            for result in controller.evaluate(enqueue=enqueue_delivery)}
