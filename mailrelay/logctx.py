"""Log lines carry the task and message ids of what is being worked on, never content."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("mailrelay_log")


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    merged = {**_context.get({}), **{k: v for k, v in fields.items() if v}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, str]:
    return dict(_context.get({}))


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """Appends ``key=value`` of the current context (ids only) to each message."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        fields = _context.get({})
        if fields:
            msg = f"{msg} [{' '.join(f'{k}={v}' for k, v in sorted(fields.items()))}]"
        return msg, kwargs


def get_logger(name: str) -> ContextLogger:
    return ContextLogger(logging.getLogger(name), {})
