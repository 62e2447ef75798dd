"""Engines and sessions, one engine per process.

Celery's prefork pool forks after the app is imported; a connection inherited across
fork is shared by two processes and corrupts both. Engines are therefore cached per pid.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

from mailrelay.config import default_sqlite_path, get_settings
from mailrelay.errors import TransientInfraError

_engines: dict[tuple[int, str, bool], Engine] = {}


def _on_sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets workers read while one writes; busy_timeout turns lock contention into waiting.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, pool_size: int = 2, *, autocommit: bool = False) -> Engine:
    if url.startswith("sqlite"):
        if url == f"sqlite:///{default_sqlite_path()}":
            # The default location is mailrelay's to make; a path the user set is not.
            default_sqlite_path().parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a database error's text must not carry a message's content.
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round trip per checkout on the hot path. A dead
        # connection surfaces as OperationalError, which retries the task instead.
        pool_pre_ping=False,
        pool_recycle=1800,
        hide_parameters=True,
        connect_args={"connect_timeout": 10, "application_name": "mailrelay"},
        # Set once per new connection; switching a pooled connection in and out of
        # autocommit would cost round trips at every checkout and checkin.
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    return engine


def get_engine(url: str | None = None) -> Engine:
    return _cached_engine(url or get_settings().database_url, autocommit=False)


def get_autocommit_engine() -> Engine:
    """PostgreSQL connections in autocommit, for transitions that are one statement.

    A single statement is its own transaction, so it needs neither psycopg2's separate
    BEGIN nor a COMMIT: one round trip instead of three on the deliver path. A pool of
    its own, because a connection that a caller expects to be transactional must never
    arrive in autocommit.
    """
    return _cached_engine(get_settings().database_url, autocommit=True)


def _cached_engine(url: str, *, autocommit: bool) -> Engine:
    key = (os.getpid(), url, autocommit)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = make_engine(url, get_settings().db_pool_size, autocommit=autocommit)
    return engine


def dispose_all() -> None:
    """Forget every engine (after fork, or between tests) without touching inherited sockets."""
    for (pid, _url, _autocommit), engine in list(_engines.items()):
        engine.dispose(close=pid == os.getpid())
    _engines.clear()


def db_now(conn: Connection) -> dt.datetime:
    """The database's clock (UTC, aware), so that leases and due times mean the same on
    every host whatever its own clock says. SQLite lives on one host: its clock is ours."""
    if conn.dialect.name == "postgresql":
        value = conn.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()
        return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
    return dt.datetime.now(dt.UTC)


def session(url: str | None = None) -> Session:
    return sessionmaker(get_engine(url), expire_on_commit=False)()


@contextmanager
def db_errors() -> Iterator[None]:
    """Turn 'the database is away' into a retryable error; let real bugs through."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError) as err:
        raise TransientInfraError(
            "database_unavailable", type(getattr(err, "orig", None) or err).__name__) from err
