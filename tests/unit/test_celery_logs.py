"""Celery's log lines that would print a task message print its size instead."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from celery.concurrency.base import BasePool
from celery.worker.consumer.consumer import Consumer

from mailrelay import celery_logs

MARKER = f"marker-{uuid.uuid4().hex}"
BODY = ([], {"message": {"to": [f"{MARKER}@example.org"], "subject": MARKER}}, {})


@pytest.fixture(autouse=True)
def installed() -> None:
    celery_logs.install()
    celery_logs.install()  # once per process, however often it is called
    for name in (celery_logs.CONSUMER_LOGGER, celery_logs.POOL_LOGGER):
        assert len([f for f in logging.getLogger(name).filters
                    if isinstance(f, celery_logs.MessageLeftOut)]) == 1


class _Message:
    """What the consumer reads of a received message (kombu's, without a channel)."""

    def __init__(self) -> None:
        self.headers = {"id": "t-1", "task": "mailrelay.snd", "kwargsrepr": repr(BODY[1])}
        self.delivery_info = {"routing_key": "mailrelay.intake"}
        self.properties: dict[str, Any] = {}
        self.body = repr(BODY)

    def reject_log_error(self, *_: Any) -> None:
        pass


class _Backend:
    def mark_as_failure(self, *_: Any, **__: Any) -> None:
        pass


class _App:
    backend = _Backend()


class _Consumer:
    app = _App()
    connection_errors = ()
    event_dispatcher = None


def test_an_unregistered_task_is_logged_without_its_message(caplog: pytest.LogCaptureFixture) -> None:
    # A producer's typo in the task name: Celery logs the body and the headers at ERROR.
    with caplog.at_level(logging.ERROR, logger=celery_logs.CONSUMER_LOGGER):
        Consumer.on_unknown_task(_Consumer(), BODY, _Message(), KeyError("mailrelay.snd"))
    assert "Received unregistered task of type 'mailrelay.snd'" in caplog.text
    assert "<left out:" in caplog.text and MARKER not in caplog.text


def test_an_invalid_task_is_logged_without_its_message(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger=celery_logs.CONSUMER_LOGGER):
        Consumer.on_invalid_task(_Consumer(), BODY, _Message(), ValueError("bad eta"))
    assert "bad eta" in caplog.text and MARKER not in caplog.text


def test_the_pool_s_debug_line_leaves_the_message_out(caplog: pytest.LogCaptureFixture) -> None:
    class Pool(BasePool):  # type: ignore[misc]
        def on_apply(self, *_: Any, **__: Any) -> None:
            pass

    with caplog.at_level(logging.DEBUG, logger=celery_logs.POOL_LOGGER):
        Pool(limit=1).apply_async(print, args=("mailrelay.send", "t-1", {"kwargsrepr": MARKER}, BODY))
    assert "TaskPool: Apply" in caplog.text and MARKER not in caplog.text


def test_other_lines_are_left_alone() -> None:
    record = logging.LogRecord(celery_logs.CONSUMER_LOGGER, logging.INFO, __file__, 1,
                               "consumer: %s", (MARKER,), None)
    assert celery_logs.MessageLeftOut().filter(record) and record.getMessage() == f"consumer: {MARKER}"
