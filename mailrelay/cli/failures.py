"""Failures of the environment, recognised and said in one line with their exit code.

A command that meets a service that is away, a database without the schema, a secret key
that does not fit or a file that is not there raises whatever the library raised; here
that exception (or one it was raised from) becomes one line that names the service, where
it was looked for (host and port, never a password) and what to do, and the exit code the
README documents. Anything not recognised here is left to ``exits.run_guarded`` as a bug.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from mailrelay.cli.exits import CANT_CREATE, CONFIG, NO_INPUT, UNAVAILABLE
from mailrelay.errors import ConfigError, TransientInfraError

UPGRADE_HINT = "run `mailrelay db upgrade`"
# psycopg2's SQLSTATEs for a table or a column that is not there: a schema never made or older.
_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})
_SQLITE_SCHEMA = ("no such table", "no such column")
# What PostgreSQL says when it is reached but will not let this login in.
_LOGIN_REFUSED = ("password authentication failed", "role", "does not exist", "pg_hba.conf",
                  "authentication")
_LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})
_FILE_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR})


@dataclass(frozen=True)
class Failure:
    code: int
    line: str


def explain(err: BaseException) -> Failure | None:
    """The line and exit code for ``err``, or None when it is not a known failure."""
    chain = list(_chain(err))
    for classify in _CLASSIFIERS:
        for item in chain:
            found = classify(item)
            if found is not None:
                return replace(found, line=_redacted(found.line))
    return None


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and what it was raised from or during, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(text: object) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line.rstrip(".") or "no detail"


# --- settings and secrets ---------------------------------------------------------------

def _setting(err: BaseException) -> Failure | None:
    if isinstance(err, ConfigError):
        return Failure(CONFIG, f"bad setting: {err}")
    return None


def _secret(err: BaseException) -> Failure | None:
    from mailrelay.auth.crypto import SecretUnreadable

    if isinstance(err, SecretUnreadable):
        return Failure(CONFIG, "stored account secrets do not decrypt with MAILRELAY_SECRET_KEY: "
                               "set the key they were stored with (to change keys: `new,old`, "
                               "then `mailrelay accounts rotate-key`)")
    return None


# --- broker and Redis -------------------------------------------------------------------

def _broker(err: BaseException) -> Failure | None:
    from amqp.exceptions import AccessRefused, NotAllowed
    from kombu.exceptions import OperationalError

    where = f"{_url('broker_url')} (MAILRELAY_BROKER_URL)"
    if isinstance(err, OperationalError):
        return Failure(UNAVAILABLE, f"broker unavailable at {where}: {_first_line(err)}")
    # RabbitMQ: a wrong user or password, or a virtual host the user may not use.
    if isinstance(err, AccessRefused | NotAllowed):
        return Failure(UNAVAILABLE, f"the broker at {where} refused the login: {_first_line(err)}")
    return None


def _redis(err: BaseException) -> Failure | None:
    import redis

    where = f"{_url('redis_url')} (MAILRELAY_REDIS_URL)"
    if isinstance(err, redis.AuthenticationError):
        return Failure(UNAVAILABLE, f"Redis at {where} refused the login: {_first_line(err)}")
    if isinstance(err, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        return Failure(UNAVAILABLE, f"Redis unavailable at {where}: {_first_line(err)}")
    return None


# --- the database -----------------------------------------------------------------------

def _database(err: BaseException) -> Failure | None:
    from sqlalchemy import exc

    if isinstance(err, exc.NoSuchModuleError | exc.ArgumentError):
        return Failure(CONFIG, f"bad setting: MAILRELAY_DATABASE_URL: {_first_line(err)}")
    # The DBAPI's own error: wrapped by SQLAlchemy, or (psycopg2 only) bare as the cause
    # of what the prepared statements raise (store/pg_fastpath.py).
    orig = err.orig if isinstance(err, exc.DBAPIError) else err
    if isinstance(err, exc.DBAPIError) and isinstance(orig, sqlite3.Error):
        return _sqlite(orig)
    import psycopg2

    if not isinstance(orig, psycopg2.Error):
        return None
    where = f"{database_where()} (MAILRELAY_DATABASE_URL)"
    if orig.pgcode in _SCHEMA_SQLSTATES:
        return Failure(CONFIG, f"the database at {where} has no mailrelay schema, or an older "
                               f"one: {UPGRADE_HINT}")
    if isinstance(orig, psycopg2.OperationalError | psycopg2.InterfaceError):
        said = _postgres_said(str(orig))
        if said.startswith("FATAL:") and any(w in said for w in _LOGIN_REFUSED):
            return Failure(UNAVAILABLE, f"the database at {where} refused the login: "
                                        f"{said.removeprefix('FATAL:').strip()}")
        return Failure(UNAVAILABLE, f"database unavailable at {where}: {said}")
    return None


def _postgres_said(text: str) -> str:
    """libpq's reason, without its 'connection to server at ... failed:' preamble."""
    line = _first_line(text)
    _, sep, reason = line.partition(" failed: ")
    return " ".join((reason if sep else line).split())


def _sqlite(orig: sqlite3.Error) -> Failure | None:
    text = str(orig)
    path = sqlite_path()
    if any(text.startswith(prefix) for prefix in _SQLITE_SCHEMA):
        return Failure(CONFIG, f"the database {path} (MAILRELAY_DATABASE_URL) has no mailrelay "
                               f"schema, or an older one: {UPGRADE_HINT}")
    if "unable to open database file" in text:
        folder = Path(path).parent
        if not folder.is_dir():
            return Failure(CANT_CREATE, f"the database {path} (MAILRELAY_DATABASE_URL) cannot be "
                                        f"created: the directory {folder} does not exist")
        return Failure(CANT_CREATE, f"the database {path} (MAILRELAY_DATABASE_URL) cannot be "
                                    "opened or created: check the permissions of the file and "
                                    "its directory")
    if isinstance(orig, sqlite3.OperationalError):
        return Failure(UNAVAILABLE, f"database unavailable: {path}: {_first_line(text)}")
    return None


def database_where() -> str:
    """Where MAILRELAY_DATABASE_URL points, without its password: host:port/db or a path."""
    from sqlalchemy.engine import make_url

    url = make_url(_setting_value("database_url"))
    if url.get_backend_name() == "sqlite":
        return sqlite_path()
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def sqlite_path() -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(_setting_value("database_url")).database or ":memory:")


# --- files and ports --------------------------------------------------------------------

def _os(err: BaseException) -> Failure | None:
    if not isinstance(err, OSError):
        return None
    if err.errno in _LISTEN_ERRNOS:
        return Failure(UNAVAILABLE, f"cannot listen: {err.strerror or err} (a port is taken)")
    if err.errno in _FILE_ERRNOS and err.filename is not None:
        return Failure(NO_INPUT, f"cannot open {err.filename}: {err.strerror}")
    return None


def _infrastructure(err: BaseException) -> Failure | None:
    """Last resort: mailrelay's own 'a dependency is away' error, with what it knows."""
    if isinstance(err, TransientInfraError):
        return Failure(UNAVAILABLE, str(err))
    return None


# Most specific first: a database error wrapped in TransientInfraError is said by _database.
_CLASSIFIERS: tuple[Callable[[BaseException], Failure | None], ...] = (
    _setting, _secret, _broker, _redis, _database, _os, _infrastructure)


def broker_trouble(err: BaseException) -> str:
    """What kept a publish from the broker, in the words of ``explain`` when it knows."""
    found = explain(err)
    return found.line if found else f"could not enqueue ({type(err.__cause__ or err).__name__})"


def reconciler_eta() -> int:
    """Seconds until the reconciler has enqueued a message left queued now, about: it
    takes messages untouched for MAILRELAY_RECONCILE_AFTER, and beat runs it each minute."""
    from mailrelay.config import get_settings

    return get_settings().reconcile_after + 60


# --- where, without passwords -----------------------------------------------------------

def _setting_value(attr: str) -> str:
    from mailrelay.config import get_settings

    try:
        return str(getattr(get_settings(), attr))
    except ConfigError:
        return "?"


def _url(attr: str) -> str:
    from mailrelay.config import mask_url

    return mask_url(_setting_value(attr))


def _redacted(line: str) -> str:
    """``line`` with any password of a service URL in the settings masked."""
    from urllib.parse import urlsplit

    from mailrelay.config import get_settings

    try:
        settings = get_settings()
    except ConfigError:
        return line
    for url in (settings.database_url, settings.broker_url, settings.redis_url,
                settings.result_backend):
        password = urlsplit(url).password
        if password:
            line = line.replace(password, "***")
    return line
