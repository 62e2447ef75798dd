"""What a worker shows of a task: ids only, however the producer published it."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from celery import Celery
from celery.app.amqp import AMQP
from celery.app.trace import trace_task
from kombu.message import Message
from kombu.utils.json import dumps

from mailrelay.celery_app import REDACTED_KWARGS, SEND_TASK, app
from mailrelay.tasks.base import MailrelayTask, RedactedRequest, ids_only

MARKER = f"marker-{uuid.uuid4().hex}"
MESSAGE = {"from": "sender@example.com", "to": [f"{MARKER}@example.org"],
           "subject": f"Subject {MARKER}", "text": f"Body {MARKER}"}


def received(name: str, kwargs: dict[str, Any], args: tuple[Any, ...] = ()) -> Message:
    """The message a worker receives from a producer without mailrelay: Celery's own
    builder, which puts repr(kwargs), the whole message, in the headers."""
    built = AMQP(app).as_task_v2(str(uuid.uuid4()), name, args=args, kwargs=kwargs)
    assert MARKER in built.headers["kwargsrepr"] + built.headers["argsrepr"]  # what it sends
    return Message(body=dumps(built.body), headers=built.headers, content_type="application/json",
                   content_encoding="utf-8", delivery_info={"routing_key": "mailrelay.intake"})


def request(message: Message, task_name: str = SEND_TASK, on: Celery = app) -> RedactedRequest:
    return RedactedRequest(message, app=on, task=on.tasks[task_name], hostname="w@test")


@pytest.mark.parametrize(("args", "kwargs"), [((), {"message": MESSAGE}), ((MESSAGE,), {})])
def test_inspect_events_and_repr_show_ids_only(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    app.loader.import_default_modules()
    req = request(received(SEND_TASK, kwargs, args))
    # What `inspect active` (safe or not), `reserved`, `scheduled`, `query_task` return,
    # what task-received events carry, and what the pool child's request context holds.
    shown = [req.info(), req.info(safe=True), repr(req), str(req), req.argsrepr,
             req.kwargsrepr, req.request_dict["argsrepr"], req.request_dict["kwargsrepr"]]
    assert not [text for text in map(str, shown) if MARKER in text]
    if kwargs:
        assert req.info()["kwargs"] == REDACTED_KWARGS and req.info()["args"] == "()"
    else:
        assert req.info()["args"] == "('<redacted>',)"
    # The task itself still gets the message.
    assert (tuple(req.args), req.kwargs) == (args, kwargs)


def test_a_delivery_shows_its_message_id() -> None:
    app.loader.import_default_modules()
    req = request(received("mailrelay.deliver", {"message_id": "m-1", "note": MARKER}),
                  "mailrelay.deliver")
    assert req.info()["kwargs"] == repr({"message_id": "m-1", "note": "<redacted>"})


def test_ids_only_keeps_nothing_but_short_string_ids() -> None:
    assert ids_only((), {"message_id": "abc"}) == ("()", "{'message_id': 'abc'}")
    assert ids_only([1, "x"], {"message_id": {"to": MARKER}}) == (
        "('<redacted>', '<redacted>')", "{'message_id': '<redacted>'}")
    assert ids_only((), {"message_id": MARKER * 3})[1] == "{'message_id': '<redacted>'}"
    assert ids_only(None, None) == ("'<redacted>'", "'<redacted>'")  # a malformed body


def test_the_failure_log_of_a_task_carries_ids_only(caplog: pytest.LogCaptureFixture) -> None:
    # Celery logs "Task ... raised unexpected" from the pool child, with the request's
    # argsrepr/kwargsrepr in the record's `data` (what JSON log formatters and Sentry's
    # logging integration print).
    other = Celery("pii-test", set_as_current=False)

    @other.task(name="pii.explode", base=MailrelayTask, bind=True)
    def explode(self: MailrelayTask, message: Any = None) -> None:
        raise RuntimeError("boom")

    req = request(received("pii.explode", {"message": MESSAGE}), "pii.explode", on=other)
    with caplog.at_level(logging.INFO, logger="celery.app.trace"):
        trace_task(explode, req.id, req.args, req.kwargs, request=req.request_dict, app=other)
    failures = [r for r in caplog.records if "raised unexpected" in r.getMessage()]
    assert len(failures) == 1
    data = failures[0].data  # type: ignore[attr-defined]
    assert (data["args"], data["kwargs"]) == ("()", REDACTED_KWARGS)
    assert MARKER not in caplog.text


@pytest.mark.parametrize(("routing_key", "queue"), [
    ("mailrelay.gmail", "mailrelay.gmail"),
    # Delivered by RabbitMQ's native delayed delivery: the delay's bits come first.
    ("0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1.mailrelay.gmail", "mailrelay.gmail"),
])
def test_a_retried_task_goes_back_to_the_queue_it_came_through(
        monkeypatch: pytest.MonkeyPatch, routing_key: str, queue: str) -> None:
    from mailrelay.errors import TransientInfraError

    other = Celery("retry-test", set_as_current=False)

    @other.task(name="mailrelay.test_flaky", base=MailrelayTask, bind=True)
    def flaky(self: MailrelayTask) -> None:
        raise TransientInfraError("database_unavailable", "OperationalError")

    asked: dict[str, Any] = {}

    def retry(**options: Any) -> Exception:
        asked.update(options)
        return RuntimeError("retried")

    monkeypatch.setattr(flaky, "retry", retry)
    flaky.push_request(id="t-1", retries=3, delivery_info={"exchange": "mailrelay",
                                                           "routing_key": routing_key})
    try:
        with pytest.raises(RuntimeError, match="retried"):
            flaky()
    finally:
        flaky.pop_request()
    assert asked["queue"] == queue
    # Whole seconds, as native delayed delivery needs them.
    assert asked["countdown"] is None or (isinstance(asked["countdown"], int) and asked["countdown"] >= 1)
