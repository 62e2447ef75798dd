"""`mailrelay db`: schema migrations."""

from __future__ import annotations

import click

from mailrelay.cli.exits import USAGE, Exit
from mailrelay.cli.output import emit_json, json_option
from mailrelay.config import get_settings, mask_url
from mailrelay.store import migrate
from mailrelay.store.db import db_errors


@click.group("db")
def command() -> None:
    """Manage the outbox database schema (alembic migrations, the same on PostgreSQL and
    SQLite)."""


def _revisions(url: str) -> dict[str, str | None]:
    with db_errors():
        return {"database": migrate.current(url), "newest": migrate.head()}


@command.command("upgrade")
@click.argument("revision", default="head", required=False)
# Before 0.1 the target was an option; kept so that scripts written then still work.
@click.option("--revision", "revision_option", hidden=True)
@json_option
def upgrade(revision: str, revision_option: str | None, as_json: bool) -> None:
    """Apply migrations up to REVISION (default: head, the newest this version knows).

    Run it before starting workers of a new version; it is safe to run again.
    """
    from alembic.util.exc import CommandError

    target = revision_option or revision
    url = get_settings().database_url
    with db_errors():
        try:
            migrate.upgrade(url, target)
        except CommandError as err:  # an unknown revision, or one below the database's
            raise Exit(f"cannot upgrade to {target!r}: {err}; revisions: head, "
                       f"{', '.join(migrate.revisions())}", USAGE) from None
    found = _revisions(url)
    if as_json:
        emit_json({"database_url": mask_url(url), **found})
    else:
        click.echo(f"database at revision {found['database']}")


@command.command("current")
@json_option
def current(as_json: bool) -> None:
    """Print the database's revision and the newest one this version knows."""
    url = get_settings().database_url
    found = _revisions(url)
    if as_json:
        emit_json({"database_url": mask_url(url), **found,
                   "up_to_date": found["database"] == found["newest"]})
        return
    click.echo(f"database: {found['database'] or 'empty'}")
    click.echo(f"newest:   {found['newest']}")
