"""`mailrelay db`: schema migrations."""

from __future__ import annotations

import click

from mailrelay.cli.exits import USAGE, Exit
from mailrelay.cli.output import dry_run_option, emit_json, json_option
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
@dry_run_option
@json_option
def upgrade(revision: str, revision_option: str | None, dry_run: bool, as_json: bool) -> None:
    """Apply migrations up to REVISION (default: head, the newest this version knows).

    Run it before starting workers of a new version; it is safe to run again (a REVISION
    the database is already at or past applies nothing). Exit 2 for an unknown REVISION.

    --json prints {"database_url", "database", "newest"} (database: the revision after).
    --dry-run applies nothing and prints the revision the database is at and the
    migrations it would apply, oldest first; --json then adds "would_apply" (a list) and
    "dry_run": true, "database" being the revision now.
    """
    from alembic.util.exc import CommandError

    target = revision_option or revision
    url = get_settings().database_url
    with db_errors():
        try:
            # The real run resolves REVISION the same way before it applies anything.
            now, todo = migrate.pending(url, target)
            if not dry_run:
                migrate.upgrade(url, target)
        except CommandError as err:  # an unknown revision
            raise Exit(f"cannot upgrade to {target!r}: {err}; revisions: head, "
                       f"{', '.join(migrate.revisions())}", USAGE) from None
    if dry_run:
        found = {"database": now, "newest": migrate.head()}
        if as_json:
            emit_json({"database_url": mask_url(url), **found, "would_apply": todo,
                       "dry_run": True})
        else:
            click.echo(f"database at revision {now or 'none (empty)'}; "
                       + (f"would apply {', '.join(todo)}" if todo else "nothing to apply")
                       + " (dry run: nothing applied)")
        return
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
