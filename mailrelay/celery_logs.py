"""Celery's log lines that print a whole task message, with the message left out.

A worker logs the body (and the headers, whose ``kwargsrepr`` a producer may have filled
with the same) of a message it cannot run: an unregistered task name (a producer's typo),
an invalid or undecodable message. At debug level it logs the body of every task it
hands to the pool. The body of a ``mailrelay.send`` is the email itself. Those lines keep
what explains them (the error, the task name in the text) and show the size of what was
left out instead.

A filter on the two loggers involved, so it costs nothing until one of these lines is
logged; the lines are recognized by Celery's own format strings.
"""

from __future__ import annotations

import logging

from celery.worker.consumer.consumer import (
    INVALID_TASK_ERROR,
    MESSAGE_DECODE_ERROR,
    UNKNOWN_FORMAT,
    UNKNOWN_TASK_ERROR,
)

CONSUMER_LOGGER = "celery.worker.consumer.consumer"
POOL_LOGGER = "celery.pool"
# celery/concurrency/base.py, BasePool.apply_async (no constant of Celery's to import).
POOL_APPLY = "TaskPool: Apply %s (args:%s kwargs:%s)"

# (logger, format string) -> the positions of the arguments that hold a message.
_HIDDEN_ARGUMENTS: dict[tuple[str, str], frozenset[int]] = {
    (CONSUMER_LOGGER, UNKNOWN_TASK_ERROR): frozenset({1, 2}),  # body, headers
    (CONSUMER_LOGGER, INVALID_TASK_ERROR): frozenset({1}),  # body
    (CONSUMER_LOGGER, MESSAGE_DECODE_ERROR): frozenset({3, 4}),  # headers, body
    (CONSUMER_LOGGER, UNKNOWN_FORMAT): frozenset({0}),  # a report holding both
    (POOL_LOGGER, POOL_APPLY): frozenset({1, 2}),  # the trace's arguments (request, body)
}


def hidden(value: object) -> str:
    return f"<left out: {len(str(value))} characters>"


class MessageLeftOut(logging.Filter):
    """Replaces the message-holding arguments of the log lines above."""

    def filter(self, record: logging.LogRecord) -> bool:
        positions = _HIDDEN_ARGUMENTS.get((record.name, str(record.msg)))
        if positions and isinstance(record.args, tuple):
            record.args = tuple(hidden(arg) if index in positions else arg
                                for index, arg in enumerate(record.args))
        return True


def install() -> None:
    """Add the filter to Celery's loggers, once per process."""
    for name in {logger for logger, _ in _HIDDEN_ARGUMENTS}:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, MessageLeftOut) for existing in logger.filters):
            logger.addFilter(MessageLeftOut())
