"""Checks a command makes before it starts work that would fail later, or fail slowly.

Celery alone would start a worker whatever the state of its services and retry the
broker for minutes in its log; a worker meeting a database without the schema or a key
that does not decrypt would fail message after message; a consent would be approved in
a browser only to find the database away when the grant is stored. Checking first turns
each into one line and an exit code at once (69 a service is away: a supervisor restarts
it; 78 a setting or the schema: fix it first). Once running, Celery's own reconnection
takes over.
"""

from __future__ import annotations

import errno
import socket

from mailrelay.cli.exits import CONFIG, UNAVAILABLE, Exit


def check_broker() -> None:
    """One connection to the broker, no retries: a refused port fails at once."""
    from mailrelay.celery_app import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=0)


def check_database() -> None:
    """The outbox answers and has this version's schema (or a newer one: during a rolling
    upgrade an old worker that restarts must still start)."""
    from mailrelay.cli.failures import database_where
    from mailrelay.config import get_settings
    from mailrelay.store import migrate
    from mailrelay.store.db import db_errors

    url = get_settings().database_url
    with db_errors():
        found = migrate.current(url)
    newest = migrate.head()
    where = f"the database at {database_where()} (MAILRELAY_DATABASE_URL)"
    if found is None:
        raise Exit(f"{where} has no mailrelay schema: run `mailrelay db upgrade`", CONFIG)
    if found != newest and found in migrate.revisions():
        raise Exit(f"{where} is at revision {found}, this version needs {newest}: run "
                   "`mailrelay db upgrade`", CONFIG)


def check_secret_key(*, required: bool = False) -> None:
    """The key decrypts the newest stored secret (nothing to check with none stored);
    ``required``: there must be a key, because the command will store secrets."""
    from mailrelay.auth import accounts, crypto

    if required:
        crypto.keyring()  # ConfigError naming MAILRELAY_SECRET_KEY when it is missing
    accounts.check_key()


def check_redis() -> None:
    """mailrelay's own Redis (MAILRELAY_REDIS_URL) answers."""
    from mailrelay.redis_client import get_redis

    get_redis().ping()


def check_port(port: int, address: str, what: str) -> None:
    """Nobody listens on ``address:port`` yet; ``what`` names the setting or option."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as err:
            if err.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                raise
            raise Exit(f"cannot listen on {address}:{port} ({what}): {err.strerror}",
                       UNAVAILABLE) from None
