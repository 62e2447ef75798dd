"""How big the outbox is: rows and bytes of each table, for `mailrelay db stats`.

PostgreSQL: ``pg_total_relation_size`` (the table, its TOAST and its indexes). It shrinks
only once VACUUM hands space back, so after a purge the rows drop at once and the bytes
stay until autovacuum has reused them. SQLite: the ``dbstat`` table where the library was
built with it (the pages of the table and its indexes), else each table's bytes are
unknown (None); the database's own size comes from its page count on either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, exc, func, select, text

from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import Base


@dataclass(frozen=True)
class TableSize:
    rows: int
    bytes: int | None


@dataclass(frozen=True)
class Sizes:
    backend: str
    database_bytes: int | None
    tables: dict[str, TableSize]

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "database_bytes": self.database_bytes,
                "tables": {name: {"rows": size.rows, "bytes": size.bytes}
                           for name, size in self.tables.items()}}


def measure() -> Sizes:
    """Every mailrelay table's rows (counted exactly: this is an operator's command, not
    a hot path) and bytes, in one read."""
    names = [table.name for table in Base.metadata.sorted_tables]
    with db_errors(), get_engine().connect() as conn:
        rows = {table.name: int(conn.execute(select(func.count()).select_from(table))
                                .scalar_one())
                for table in Base.metadata.sorted_tables}
        backend = conn.dialect.name
        if backend == "postgresql":
            sizes, total = _postgresql(conn, names)
        else:
            sizes, total = _sqlite(conn, names)
    return Sizes(backend, total,
                 {name: TableSize(rows[name], sizes.get(name)) for name in names})


def _postgresql(conn: Connection, names: list[str]) -> tuple[dict[str, int], int]:
    found = {name: int(conn.execute(text("SELECT pg_total_relation_size(CAST(:name AS regclass))"),
                                    {"name": name}).scalar_one())
             for name in names}
    return found, int(conn.execute(text("SELECT pg_database_size(current_database())"))
                      .scalar_one())


def _sqlite(conn: Connection, names: list[str]) -> tuple[dict[str, int], int]:
    pages = int(conn.execute(text("PRAGMA page_count")).scalar_one())
    total = pages * int(conn.execute(text("PRAGMA page_size")).scalar_one())
    owner = {row.name: row.tbl_name for row in conn.execute(
        text("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))}
    try:
        used = conn.execute(text("SELECT name, sum(pgsize) AS bytes FROM dbstat GROUP BY name")).all()
    except exc.OperationalError:  # built without SQLITE_ENABLE_DBSTAT_VTAB
        return {}, total
    found = dict.fromkeys(names, 0)
    for row in used:
        table = owner.get(row.name)
        if table in found:
            found[table] += int(row.bytes)
    return found, total
