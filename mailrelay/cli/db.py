"""`mailrelay db`: schema migrations."""

from __future__ import annotations

import click

from mailrelay.config import get_settings
from mailrelay.store import migrate
from mailrelay.store.db import db_errors


@click.group("db")
def command() -> None:
    """Manage the outbox database schema."""


@command.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (the newest by default)."""
    with db_errors():
        migrate.upgrade(get_settings().database_url, revision)
        click.echo(f"database at revision {migrate.current(get_settings().database_url)}")


@command.command("current")
def current() -> None:
    """Print the database's revision and the newest one this version knows."""
    with db_errors():
        click.echo(f"database: {migrate.current(get_settings().database_url) or 'empty'}")
    click.echo(f"newest:   {migrate.head()}")
