"""``mailrelay.deliver``: one attempt for one message id; see delivery.py for the sequence."""

from __future__ import annotations

from typing import Any

from mailrelay import notify
from mailrelay.celery_app import DELIVER_TASK, app
from mailrelay.config import get_settings
from mailrelay.delivery import deliver as deliver_once
from mailrelay.logctx import get_logger
from mailrelay.tasks.base import MailrelayTask
from mailrelay.tasks.outcomes import publish_outcome
from mailrelay.tasks.routing import enqueue_delivery

log = get_logger(__name__)


_LIMIT = get_settings().deliver_time_limit


# Past the soft limit the provider call in progress ends as an outcome unknown (asked
# about before any resend); the lease keeps anyone else off the message meanwhile.
@app.task(name=DELIVER_TASK, base=MailrelayTask, bind=True, soft_time_limit=_LIMIT,
          time_limit=_LIMIT + 60)
def deliver(self: MailrelayTask, message_id: Any = None) -> str | None:
    if not isinstance(message_id, str) or not message_id:
        log.warning("mailrelay.deliver called without a message id; dropped")
        return None
    report = deliver_once(message_id, worker=self.worker_name)
    notify.publish(report.notification, publish_outcome)
    if report.retry_in is not None and report.provider:
        enqueue_delivery(report.message_id, report.provider, countdown=report.retry_in)
    return report.state
