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
