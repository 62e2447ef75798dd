"""Periodic jobs on ``mailrelay.control``, scheduled by beat_schedule.py."""

from __future__ import annotations

from mailrelay import notify
from mailrelay.celery_app import app
from mailrelay.logctx import get_logger
from mailrelay.metrics import RECONCILE_RUNS, RETENTION_REMOVED
from mailrelay.reconcile import reconcile as reconcile_once
from mailrelay.tasks.base import MailrelayTask
from mailrelay.tasks.outcomes import publish_outcome
from mailrelay.tasks.routing import enqueue_delivery

RECONCILE_TASK = "mailrelay.reconcile"
EXPIRE_KEYS_TASK = "mailrelay.expire_idempotency_keys"
PURGE_TASK = "mailrelay.purge_outbox"
# Seconds after which a purge run starts no new batch and leaves the rest to the next
# run: the control worker is solo, and the reconciler (every 15 s) waits behind it.
PURGE_BUDGET_SECONDS = 10.0
ROLLOUT_TASK = "mailrelay.rollout_evaluate"
EXPORT_TASK = "mailrelay.export_metrics"
log = get_logger(__name__)


def reconcile_all() -> tuple[int, int]:
    """One reconciler run, as beat, `mailrelay reconcile` and the tests make it: stranded
    messages re-enqueued, then the due outcome notifications (a worker could not publish
    them, or died first) published; how many of each."""
    return reconcile_once(enqueue_delivery), notify.republish_due(publish_outcome)


@app.task(name=RECONCILE_TASK, base=MailrelayTask, bind=True)
def reconcile(self: MailrelayTask) -> int:
    try:
        count, published = reconcile_all()
    except Exception:
        RECONCILE_RUNS.labels(result="error").inc()
        raise
    RECONCILE_RUNS.labels(result="ok").inc()
    if count:
        log.warning("re-enqueued %d stranded messages", count)
    if published:
        log.warning("published %d pending outcome notifications", published)
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


@app.task(name=PURGE_TASK, base=MailrelayTask, bind=True)
def purge_outbox(self: MailrelayTask) -> dict[str, int | bool]:
    """Delete ended messages past MAILRELAY_ROW_RETENTION and drop the payloads of those
    past MAILRELAY_PAYLOAD_RETENTION (see mailrelay/store/retention.py); what it removed."""
    from mailrelay.store import retention

    removed = retention.purge(retention.Retention.configured(), budget=PURGE_BUDGET_SECONDS)
    counts = removed.counts()
    for kind, count in counts.items():
        if count:
            RETENTION_REMOVED.labels(kind=kind).inc(count)
    if any(counts.values()) or not removed.complete:
        # Counts only: never an id, an address or content.
        log.info("retention: deleted %d messages (%d attempts, %d audit rows, %d notifications), "
                 "dropped %d payloads%s", removed.messages, removed.attempts, removed.audit,
                 removed.notifications, removed.payloads,
                 "" if removed.complete else "; more left for the next run")
    return removed.as_dict()


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
