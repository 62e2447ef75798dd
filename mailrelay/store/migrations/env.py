"""Alembic environment: runs migrations online against the URL `migrate.py` sets."""

from __future__ import annotations

from alembic import context

from mailrelay.store.db import make_engine
from mailrelay.store.models import Base

config = context.config


def run() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "migrate.py sets sqlalchemy.url"
    engine = make_engine(url)
    with engine.connect() as connection:
        # Batch mode rebuilds tables on SQLite, which cannot ALTER most things in place.
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=True, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
