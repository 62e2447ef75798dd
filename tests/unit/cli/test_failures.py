"""The one edge: real failures of real services become one line and the documented code."""

from __future__ import annotations

import socket
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
import redis
from kombu import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, text

from mailrelay.cli import exits
from mailrelay.cli.failures import explain

PASSWORD = "hunter2-very-secret"


def closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unanswered_ping() -> None:
    """A Redis client for a closed port, without redis-py's retries (seconds of backoff)."""
    redis.Redis(port=closed_port(), retry=Retry(NoBackoff(), 0)).ping()


def raised(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except Exception as err:
        return err
    raise AssertionError("nothing was raised")


def test_a_database_that_does_not_answer(setenv: Callable[..., None]) -> None:
    port = closed_port()
    url = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{port}/mailrelay"
    setenv(MAILRELAY_DATABASE_URL=url)
    failure = explain(raised(lambda: create_engine(url).connect()))
    assert failure is not None and failure.code == 69
    assert failure.line.startswith(f"database unavailable at 127.0.0.1:{port}/mailrelay")
    assert "MAILRELAY_DATABASE_URL" in failure.line and PASSWORD not in failure.line


def test_a_database_that_refuses_the_login(setenv: Callable[..., None]) -> None:
    url = f"postgresql+psycopg2://mailrelay_nobody:{PASSWORD}@127.0.0.1:5432/test"
    setenv(MAILRELAY_DATABASE_URL=url)
    failure = explain(raised(lambda: create_engine(url).connect()))
    assert failure is not None and failure.code == 69
    assert "127.0.0.1:5432" in failure.line and "refused the login" in failure.line
    assert "mailrelay_nobody" in failure.line and PASSWORD not in failure.line


def test_a_database_without_the_schema(setenv: Callable[..., None], migrated_database: str) -> None:
    from tests import services

    name = services.create_database()
    try:
        url = services.pg_url(name)
        setenv(MAILRELAY_DATABASE_URL=url)
        engine = create_engine(url)
        failure = explain(raised(lambda: engine.connect().execute(text("SELECT * FROM messages"))))
        engine.dispose()
    finally:
        services.drop_database(name)
    assert failure is not None and failure.code == 78
    assert failure.line.endswith("run `mailrelay db upgrade`") and name in failure.line


def test_sqlite_without_the_schema_and_in_a_missing_directory(setenv: Callable[..., None],
                                                             tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    setenv(MAILRELAY_DATABASE_URL=f"sqlite:///{empty}")
    failure = explain(raised(lambda: sqlite3.connect(empty).execute("SELECT * FROM messages")))
    # A bare sqlite3 error is not recognised: only what SQLAlchemy raised from it is.
    assert failure is None
    engine = create_engine(f"sqlite:///{empty}")
    failure = explain(raised(lambda: engine.connect().execute(text("SELECT * FROM messages"))))
    assert failure is not None and failure.code == 78 and str(empty) in failure.line

    nowhere = tmp_path / "missing" / "outbox.db"
    setenv(MAILRELAY_DATABASE_URL=f"sqlite:///{nowhere}")
    failure = explain(raised(lambda: create_engine(f"sqlite:///{nowhere}").connect()))
    assert failure is not None and failure.code == 73
    assert f"the directory {nowhere.parent} does not exist" in failure.line


def test_the_broker_and_redis_named_apart(setenv: Callable[..., None]) -> None:
    port = closed_port()
    setenv(MAILRELAY_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    with Connection(f"redis://127.0.0.1:{port}/0") as conn:
        broker = explain(raised(lambda: conn.ensure_connection(max_retries=0)))
    assert broker is not None and broker.code == 69
    assert broker.line.startswith(f"broker unavailable at redis://127.0.0.1:{port}/0")

    setenv(MAILRELAY_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/2")
    away = explain(raised(unanswered_ping))
    assert away is not None and away.code == 69
    assert away.line.startswith(f"Redis unavailable at redis://:***@127.0.0.1:{port}/2")
    assert PASSWORD not in away.line


def test_redis_refusing_the_login(setenv: Callable[..., None]) -> None:
    from tests import services

    url = services.REDIS_HOST.replace("redis://", f"redis://nobody:{PASSWORD}@") + "/2"
    setenv(MAILRELAY_REDIS_URL=url)
    failure = explain(raised(lambda: redis.Redis.from_url(url).ping()))
    assert failure is not None and failure.code == 69
    assert "refused the login" in failure.line and PASSWORD not in failure.line


def test_a_secret_that_does_not_decrypt_names_the_key_and_rotate_key(
        setenv: Callable[..., None]) -> None:
    from cryptography.fernet import Fernet

    from mailrelay.auth import crypto

    setenv(MAILRELAY_SECRET_KEY=Fernet.generate_key().decode())
    stored = crypto.encrypt("secret")
    setenv(MAILRELAY_SECRET_KEY=Fernet.generate_key().decode())
    failure = explain(raised(lambda: crypto.decrypt(stored)))
    assert failure is not None and failure.code == 78
    assert "MAILRELAY_SECRET_KEY" in failure.line and "rotate-key" in failure.line
    setenv(MAILRELAY_SECRET_KEY="")
    missing = explain(raised(lambda: crypto.decrypt(stored)))
    assert missing is not None and missing.code == 78
    assert "MAILRELAY_SECRET_KEY" in missing.line and "rotate-key" in missing.line


def test_files_and_ports(tmp_path: Path) -> None:
    failure = explain(raised(lambda: (tmp_path / "absent.json").read_text()))
    assert failure is not None and failure.code == 66 and "absent.json" in failure.line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as second:
            failure = explain(raised(lambda: second.bind(("127.0.0.1", port))))
    assert failure is not None and failure.code == 69 and "cannot listen" in failure.line


def test_a_bug_is_not_explained_away() -> None:
    assert explain(ValueError("a bug")) is None


# --- run_guarded: the line, the prefix, the traceback on demand ------------------------------

@click.group()
@click.option("--debug", is_flag=True, expose_value=False, callback=exits.want_tracebacks)
def toy() -> None:
    pass


@toy.command()
def away() -> None:
    unanswered_ping()


@toy.command()
def bug() -> None:
    raise ValueError("a bug")


@toy.command()
def refused() -> None:
    raise exits.Exit("no such thing", exits.NOT_FOUND)


def guarded(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mailrelay", *argv])
    monkeypatch.setattr(exits._Debug, "wanted", False)
    code = exits.run_guarded(toy)
    return code, capsys.readouterr().err


def test_one_line_with_one_prefix_and_the_traceback_only_with_debug(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = guarded(monkeypatch, capsys, "away")
    assert code == 69 and err.count("\n") == 1 and err.startswith("mailrelay: Redis unavailable")
    code, err = guarded(monkeypatch, capsys, "--debug", "away")
    assert code == 69 and "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("mailrelay: Redis unavailable")


def test_log_level_debug_also_shows_the_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        setenv: Callable[..., None]) -> None:
    setenv(MAILRELAY_LOG_LEVEL="debug")
    code, err = guarded(monkeypatch, capsys, "away")
    assert code == 69 and "Traceback" in err


def test_a_bug_is_one_line_and_exit_70(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, err = guarded(monkeypatch, capsys, "bug")
    assert code == 70 and err.count("\n") == 1
    assert err.startswith("mailrelay: internal error (ValueError)") and "--debug" in err


def test_usage_and_command_errors_share_the_prefix(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, err = guarded(monkeypatch, capsys, "refused")
    assert (code, err) == (3, "mailrelay: no such thing\n")
    code, err = guarded(monkeypatch, capsys, "nope")
    assert code == 2 and err.splitlines()[-1].startswith("mailrelay: No such command 'nope'")
    assert "Error:" not in err


def test_rabbitmq_refusing_the_login_or_the_virtual_host(setenv: Callable[..., None]) -> None:
    from amqp.exceptions import AccessRefused, NotAllowed

    setenv(MAILRELAY_BROKER_URL="amqp://app:secret@127.0.0.1:5672/relay")
    for err in (AccessRefused("Login was refused using authentication mechanism PLAIN"),
                NotAllowed("vhost relay not found")):
        failure = explain(err)
        assert failure is not None and failure.code == 69, err
        assert failure.line.startswith("the broker at amqp://") and "refused the login" in failure.line
        assert "secret" not in failure.line
