"""Periodic jobs on ``mailrelay.control``, scheduled by beat_schedule.py."""

from __future__ import annotations

from mailrelay.celery_app import app
from mailrelay.logctx import get_logger
from mailrelay.metrics import RECONCILE_RUNS
from mailrelay.reconcile import reconcile as reconcile_once
from mailrelay.tasks.base import MailrelayTask
from mailrelay.tasks.routing import enqueue_delivery

RECONCILE_TASK = "mailrelay.reconcile"
EXPIRE_KEYS_TASK = "mailrelay.expire_idempotency_keys"
ROLLOUT_TASK = "mailrelay.rollout_evaluate"
EXPORT_TASK = "mailrelay.export_metrics"
log = get_logger(__name__)


@app.task(name=RECONCILE_TASK, base=MailrelayTask, bind=True)
def reconcile(self: MailrelayTask) -> int:
    try:
        count = reconcile_once(enqueue_delivery)
    except Exception:
        RECONCILE_RUNS.labels(result="error").inc()
        raise
    RECONCILE_RUNS.labels(result="ok").inc()
    if count:
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


@app.task(name=EXPORT_TASK, base=MailrelayTask, bind=True)
def export_metrics(self: MailrelayTask) -> bool:
    """Push what only the database and the broker know (see mailrelay/export.py)."""
    from mailrelay import export
    from mailrelay.config import get_settings
    from mailrelay.tasks import queue_stats

    settings = get_settings()
    return export.export(queue_stats.read, export.Intervals(export=settings.export_interval,
                                                             rollout=settings.rollout_interval))
