"""Where a producer wants to hear how its message ended: a Celery task name and a queue.

A message's ``notify`` (``{"task": ..., "queue": ...}``) and the defaults
MAILRELAY_NOTIFY_TASK / MAILRELAY_NOTIFY_QUEUE are checked by the same rules, so that a
name mailrelay would later fail to publish to is refused at intake (``invalid_message``)
or at start, never discovered when the outcome is due.

The rules: names of at most 200 characters of the shapes Celery and both brokers take
without quoting (a dotted task name; a queue name of letters, digits and ``_.:-``), and
never a mailrelay queue or task (an outcome published to ``mailrelay.intake`` would be
read as a send request), a RabbitMQ-reserved ``amq.`` queue, nor a key the broker's
transport keeps for itself on Redis (kombu's ``unacked*`` and ``_kombu.*``, Celery's
``celeryev*`` and ``*.pidbox``): a list pushed there would break redelivery or events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailrelay.errors import ValidationError

MAX_NAME = 200
_TASK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.:][A-Za-z_][A-Za-z0-9_]*)*")
_QUEUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*")
_RESERVED = ("mailrelay.", "mailrelay:")
_BROKER_KEYS = ("unacked", "_kombu", "celeryev", "amq.")


@dataclass(frozen=True)
class Target:
    task: str
    queue: str


def task_problem(name: str) -> str | None:
    """Why ``name`` cannot be an outcome task, or None."""
    if not name or len(name) > MAX_NAME or not _TASK.fullmatch(name):
        return f"must be a dotted task name of at most {MAX_NAME} characters"
    if name.lower().startswith(_RESERVED):
        return "must not be one of mailrelay's own tasks"
    return None


def queue_problem(name: str) -> str | None:
    """Why ``name`` cannot be an outcome queue, or None."""
    if not name or len(name) > MAX_NAME or not _QUEUE.fullmatch(name):
        return (f"must be at most {MAX_NAME} letters, digits or _.:- and start with a letter, "
                "digit or _")
    if name.lower().startswith(_RESERVED) or name.lower() == "mailrelay":
        return "must not be one of mailrelay's own queues"
    if name.lower().startswith(_BROKER_KEYS) or name.lower().endswith(".pidbox"):
        return "must not be a name the broker keeps for itself (amq.*, unacked*, _kombu*, " \
               "celeryev*, *.pidbox)"
    return None


def parse(value: object) -> Target:
    """A request's ``notify`` as a Target, or ValidationError(invalid_message)."""
    if not isinstance(value, dict):
        raise ValidationError("invalid_message", "must be an object with task and queue",
                              field="notify")
    unknown = set(value) - {"task", "queue"}
    if unknown:
        raise ValidationError("invalid_message", "takes task and queue only", field="notify")
    task, queue = value.get("task"), value.get("queue")
    for field, name, problem in (("notify.task", task, task_problem),
                                 ("notify.queue", queue, queue_problem)):
        if not isinstance(name, str):
            raise ValidationError("invalid_message", "must be a string", field=field)
        reason = problem(name)
        if reason:
            raise ValidationError("invalid_message", reason, field=field)
    assert isinstance(task, str) and isinstance(queue, str)
    return Target(task, queue)


def lenient(raw: object) -> Target | None:
    """The ``notify`` of a request that is being refused, if it named a valid one: a
    rejection is reported where the request asked, whatever else is wrong with it."""
    if not isinstance(raw, dict) or "notify" not in raw:
        return None
    try:
        return parse(raw["notify"])
    except ValidationError:
        return None


def configured(task: str, queue: str) -> Target | None:
    """The default target of the settings (both set, or neither: config checks)."""
    return Target(task, queue) if task and queue else None

