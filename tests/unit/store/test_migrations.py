"""The migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from mailrelay.store import migrate
from mailrelay.store.db import get_engine
from mailrelay.store.models import Base


def test_models_and_migrations_agree(backend: str) -> None:
    with get_engine().connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == migrate.head()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_downgrade_to_nothing_and_up_again(kind: str, tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from mailrelay.store.db import make_engine
    from tests import services

    database = services.create_database() if kind == "postgresql" else None
    url = services.pg_url(database) if database else f"sqlite:///{tmp_path / 'm.db'}"
    try:
        migrate.upgrade(url)
        command.downgrade(migrate.alembic_config(url), "base")
        engine = make_engine(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        engine.dispose()
        migrate.upgrade(url)
        engine = make_engine(url)
        assert {"messages", "attempts", "audit", "accounts"} <= set(inspect(engine).get_table_names())
        engine.dispose()
    finally:
        if database:
            from mailrelay.store.db import dispose_all

            dispose_all()
            services.drop_database(database)


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_0008_keeps_every_payload_and_adds_the_retention_indexes(kind: str, tmp_path: Path) -> None:
    """An outbox at 0007 with an ended message: after the upgrade it still has its
    payload, nothing is marked purged, and the two walks have their indexes."""
    import datetime as dt

    from sqlalchemy import inspect, text

    from mailrelay.store.db import dispose_all, make_engine
    from tests import services

    database = services.create_database() if kind == "postgresql" else None
    url = services.pg_url(database) if database else f"sqlite:///{tmp_path / 'm.db'}"
    try:
        migrate.upgrade(url, "0007")
        engine = make_engine(url)
        then = dt.datetime(2020, 1, 1)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO messages (id, state, payload, size_bytes, recipient_count, "
                "attempt_count, verify_before_send, created_at, updated_at) VALUES "
                "('m1', 'sent', '{\"text\": \"t\"}', 10, 1, 1, false, :then, :then)"),
                {"then": then})
        engine.dispose()
        migrate.upgrade(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT payload, payload_purged_at FROM messages")).one()
        assert tuple(row) == ('{"text": "t"}', None)
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("messages")}
        assert {"ix_messages_payload_kept", "ix_messages_payload_purged"} <= indexes
        engine.dispose()
    finally:
        if database:
            dispose_all()
            services.drop_database(database)
