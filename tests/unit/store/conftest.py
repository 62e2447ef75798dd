from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clean_db: None) -> Iterator[str]:
    """Run the test on the real PostgreSQL database and on a fresh SQLite file."""
    from mailrelay.config import get_settings
    from mailrelay.store import migrate

    if request.param == "postgresql":
        yield request.param
        return
    saved = os.environ["MAILRELAY_DATABASE_URL"]
    os.environ["MAILRELAY_DATABASE_URL"] = f"sqlite:///{tmp_path / 'outbox.db'}"
    get_settings.cache_clear()
    migrate.upgrade(get_settings().database_url)
    try:
        yield request.param
    finally:
        os.environ["MAILRELAY_DATABASE_URL"] = saved
        get_settings.cache_clear()
