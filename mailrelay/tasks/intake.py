"""``mailrelay.send``: validate, persist, route. Returns the message id and its state."""

from __future__ import annotations

from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from mailrelay import notify
from mailrelay.celery_app import SEND_TASK, app
from mailrelay.config import get_settings
from mailrelay.intake import reject_call, reject_overtime, take_in
from mailrelay.tasks.base import MailrelayTask
from mailrelay.tasks.outcomes import publish_outcome
from mailrelay.tasks.routing import enqueue_delivery

_MISSING: Any = object()


# Bounded so that no request can hold an intake worker for long: past the soft limit the
# request is stored as rejected (intake_timeout), so that its redelivery costs nothing.
_LIMIT = get_settings().intake_time_limit


@app.task(name=SEND_TASK, base=MailrelayTask, bind=True, ignore_result=False,
          soft_time_limit=_LIMIT, time_limit=_LIMIT + 15)
def send(self: MailrelayTask, message: Any = _MISSING, **unexpected: Any) -> dict[str, Any]:
    # Any call shape is accepted, so that a malformed request is stored as `rejected`
    # with a code instead of failing inside Celery with no record.
    if message is _MISSING or unexpected:
        extra = f"; unexpected: {', '.join(sorted(unexpected))[:200]}" if unexpected else ""
        result = reject_call(f"mailrelay.send takes one argument, message{extra}",
                             request_id=self.request.id, actor=self.worker_name,
                             raw=None if message is _MISSING else message)
        notify.publish(result.notification, publish_outcome)
        return result.as_dict()
    try:
        accepted = take_in(message, request_id=self.request.id, actor=self.worker_name)
    except SoftTimeLimitExceeded:
        result = reject_overtime(message, request_id=self.request.id, actor=self.worker_name)
        notify.publish(result.notification, publish_outcome)
        return result.as_dict()
    notify.publish(accepted.result.notification, publish_outcome)
    if accepted.should_route and accepted.provider:
        enqueue_delivery(accepted.result.message_id, accepted.provider)
    return accepted.result.as_dict()
