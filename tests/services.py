"""The real services tests run against: a private PostgreSQL database, Redis databases and,
with MAILRELAY_TEST_BROKER=rabbitmq, a private RabbitMQ virtual host as the broker.

Settings are fixed in the environment before any mailrelay module reads them, so test
processes and the worker processes they start see the same configuration.
"""

from __future__ import annotations

import os
import subprocess
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


# The broker of this test run: "redis" (the default) or "rabbitmq". Tests marked
# `rabbitmq` run again on RabbitMQ in a second pass (scripts/dev test); a run on RabbitMQ
# gets a virtual host of its own, deleted at the end.
BROKER = os.environ.get("MAILRELAY_TEST_BROKER", "redis")
RABBITMQ = os.environ.get("MAILRELAY_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672")
if BROKER not in ("redis", "rabbitmq"):
    raise SystemExit(f"MAILRELAY_TEST_BROKER must be redis or rabbitmq, not {BROKER!r}")


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def create_vhost() -> str:
    """A RabbitMQ virtual host of the test run's own (guest may use it)."""
    name = f"mailrelay_test_{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


def amqp_url(vhost: str) -> str:
    return f"{RABBITMQ}/{vhost}"


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


VHOST = create_vhost() if BROKER == "rabbitmq" else ""


def configure_environment() -> str:
    """Point every MAILRELAY_* service setting at the test services; return the db name."""
    for key in [k for k in os.environ if k.startswith("MAILRELAY_")]:
        del os.environ[key]
    for env, number in REDIS_DBS.items():
        os.environ[env] = f"{REDIS_HOST}/{number}"
        redis.Redis.from_url(f"{REDIS_HOST}/{number}").flushdb()
    if BROKER == "rabbitmq":
        os.environ["MAILRELAY_BROKER_URL"] = amqp_url(VHOST)
    name = create_database()
    os.environ["MAILRELAY_DATABASE_URL"] = pg_url(name)
    os.environ["MAILRELAY_LOG_LEVEL"] = "info"
    # A key of the test run's own, so that account secrets can be stored.
    from cryptography.fernet import Fernet

    os.environ["MAILRELAY_SECRET_KEY"] = Fernet.generate_key().decode()
    return name
