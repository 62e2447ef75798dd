from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailrelay.config import get_settings
from tests import services

Snapshot = dict[str, list[str]]


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set MAILRELAY_* variables for the test and reload the settings."""

    def set_(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_
    get_settings.cache_clear()


def _plain(value: Any) -> Any:
    return bytes(value).hex() if isinstance(value, memoryview | bytes) else value


def snapshot() -> Snapshot:
    """Everything a command could change: every row of every mailrelay table (the audit
    and the rollout history included) and every key with its value in the test run's Redis
    databases (the broker's queues included), comparable before and after a dry run."""
    import redis
    from sqlalchemy import select

    from mailrelay.store.db import get_engine
    from mailrelay.store.models import Base

    found: Snapshot = {}
    with get_engine().connect() as conn:
        for table in Base.metadata.sorted_tables:
            found[table.name] = sorted(repr(tuple(map(_plain, row)))
                                       for row in conn.execute(select(table)))
    for name, number in services.REDIS_DBS.items():
        client = redis.Redis.from_url(f"{services.REDIS_HOST}/{number}")
        found[name] = sorted(f"{key!r}={client.dump(key)!r}" for key in client.keys("*"))
    return found
