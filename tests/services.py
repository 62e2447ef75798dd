"""The real services tests run against: a private PostgreSQL database and Redis databases.

Settings are fixed in the environment before any mailrelay module reads them, so test
processes and the worker processes they start see the same configuration.
"""

from __future__ import annotations

import os
import uuid

import psycopg2
import redis

PG_ADMIN = os.environ.get("MAILRELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_HOST = os.environ.get("MAILRELAY_TEST_REDIS_HOST", "redis://127.0.0.1:6379")
# Redis databases 10-12 belong to the test run; they are flushed at start. Two runs at
# once (two checkouts on one machine) need MAILRELAY_TEST_REDIS_DB to move one of them.
_BASE = int(os.environ.get("MAILRELAY_TEST_REDIS_DB", "10"))
REDIS_DBS = {"MAILRELAY_BROKER_URL": _BASE, "MAILRELAY_RESULT_BACKEND": _BASE + 1,
             "MAILRELAY_REDIS_URL": _BASE + 2}


def pg_url(database: str) -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"


def create_database() -> str:
    name = f"mailrelay_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name


def drop_database(name: str) -> None:
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def configure_environment() -> str:
    """Point every MAILRELAY_* service setting at the test services; return the db name."""
    for key in [k for k in os.environ if k.startswith("MAILRELAY_")]:
        del os.environ[key]
    for env, number in REDIS_DBS.items():
        os.environ[env] = f"{REDIS_HOST}/{number}"
        redis.Redis.from_url(f"{REDIS_HOST}/{number}").flushdb()
    name = create_database()
    os.environ["MAILRELAY_DATABASE_URL"] = pg_url(name)
    os.environ["MAILRELAY_LOG_LEVEL"] = "info"
    # A key of the test run's own, so that account secrets can be stored.
    from cryptography.fernet import Fernet

    os.environ["MAILRELAY_SECRET_KEY"] = Fernet.generate_key().decode()
    return name
