from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import delete

from tests import services

_DATABASE = services.configure_environment()


@pytest.fixture(scope="session", autouse=True)
def migrated_database() -> Iterator[str]:
    from mailrelay.store import migrate
    from mailrelay.store.db import dispose_all

    migrate.upgrade(os.environ["MAILRELAY_DATABASE_URL"])
    yield os.environ["MAILRELAY_DATABASE_URL"]
    dispose_all()
    services.drop_database(_DATABASE)
    if services.VHOST:
        services.delete_vhost(services.VHOST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests about RabbitMQ itself (marked ``rabbitmq_only``) need it as the broker."""
    if services.BROKER != "rabbitmq":
        skip = pytest.mark.skip(reason="RabbitMQ is not this run's broker "
                                       "(MAILRELAY_TEST_BROKER=rabbitmq pytest -m rabbitmq)")
        for item in items:
            if "rabbitmq_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def clean_db(migrated_database: str) -> None:
    """Every table emptied before the test."""
    from mailrelay.store.db import get_engine
    from mailrelay.store.models import Base

    with get_engine().begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))


@pytest.fixture
def clean_redis() -> None:
    import redis

    for number in services.REDIS_DBS.values():
        redis.Redis.from_url(f"{services.REDIS_HOST}/{number}").flushdb()


@pytest.fixture
def sink_account(clean_db: None) -> str:
    from mailrelay.auth import accounts

    return str(accounts.add("sink", "sender@example.com")["address"])


@pytest.fixture
def secret_key() -> str:
    return os.environ["MAILRELAY_SECRET_KEY"]


@pytest.fixture
def verify_at_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After an unknown outcome, ask the provider at once and recheck without a pause
    (MAILRELAY_VERIFY_SETTLE_SECONDS and _RECHECK_SECONDS 0), for tests about what is asked
    and sent rather than when."""
    from mailrelay.config import get_settings

    monkeypatch.setenv("MAILRELAY_VERIFY_SETTLE_SECONDS", "0")
    monkeypatch.setenv("MAILRELAY_VERIFY_RECHECK_SECONDS", "0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
