from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from mailrelay.store.db import get_engine


def query(sql: str, **params: Any) -> list[Any]:
    with get_engine().connect() as conn:
        return list(conn.execute(text(sql), params).all())


def scalar(sql: str, **params: Any) -> Any:
    with get_engine().connect() as conn:
        return conn.execute(text(sql), params).scalar()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def final(message_id: str, timeout: float = 90) -> dict[str, Any]:
    """The message's status once it is sent or failed."""
    from mailrelay.store import outbox

    wait_for(lambda: (outbox.status(message_id) or {}).get("state") in ("sent", "failed"), timeout,
             f"message {message_id} to finish")
    info = outbox.status(message_id)
    assert info is not None
    return info
