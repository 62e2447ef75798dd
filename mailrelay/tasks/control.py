"""Periodic jobs on ``mailrelay.control``, scheduled by beat_schedule.py."""

from __future__ import annotations

from mailrelay.celery_app import app
from mailrelay.logctx import get_logger
from mailrelay.metrics import RECONCILED
from mailrelay.reconcile import reconcile as reconcile_once
from mailrelay.tasks.base import MailrelayTask
from mailrelay.tasks.routing import enqueue_delivery

RECONCILE_TASK = "mailrelay.reconcile"
log = get_logger(__name__)


@app.task(name=RECONCILE_TASK, base=MailrelayTask, bind=True)
def reconcile(self: MailrelayTask) -> int:
    count = reconcile_once(enqueue_delivery)
    if count:
        RECONCILED.inc(count)
        log.warning("re-enqueued %d stranded messages", count)
    return count
