"""`mailrelay db`: schema migrations, the outbox's size, and its retention run by hand."""

from __future__ import annotations

import sys

import click

from mailrelay.cli.exits import USAGE, Exit
from mailrelay.cli.output import dry_run_option, emit_json, json_option, table
from mailrelay.config import get_settings, mask_url
from mailrelay.store import migrate
from mailrelay.store.db import db_errors


@click.group("db")
def command() -> None:
    """Manage the outbox database: its schema (alembic migrations, the same on PostgreSQL
    and SQLite), its size, and what its retention removes."""


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


def _span(seconds: int) -> str:
    """A retention as people say it: 7 d, 36 h, 90 min."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "unknown"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _retention_seconds() -> dict[str, int]:
    settings = get_settings()
    return {"payload_retention_s": settings.payload_retention,
            "row_retention_s": settings.row_retention}


@command.command("stats")
@json_option
def stats(as_json: bool) -> None:
    """Print each table's rows and bytes, and what the retention would remove now.

    Bytes on PostgreSQL are pg_total_relation_size (table, TOAST, indexes): they shrink
    after VACUUM, not at the purge. On SQLite they come from the dbstat table (unknown
    where SQLite was built without it). Nothing changes.

    --json prints {"database_url", "backend", "database_bytes", "tables": {NAME: {"rows",
    "bytes"}}, "retention": {"payloads_to_drop", "messages_to_delete",
    "payload_retention_s", "row_retention_s"}}.
    """
    from mailrelay.store import retention, sizes

    measured = sizes.measure()
    due = retention.due(retention.Retention.configured())
    found = {**measured.as_dict(), "retention": {
        "payloads_to_drop": due.payloads, "messages_to_delete": due.messages,
        **_retention_seconds()}}
    if as_json:
        emit_json({"database_url": mask_url(get_settings().database_url), **found})
        return
    table([{"table": name, "rows": size.rows, "bytes": size.bytes, "size": _bytes(size.bytes)}
           for name, size in measured.tables.items()], ["table", "rows", "bytes", "size"],
          title=f"outbox tables ({measured.backend}, {_bytes(measured.database_bytes)} in all)")
    seconds = _retention_seconds()
    click.echo(f"retention now: {due.payloads} payloads to drop (ended over "
               f"{_span(seconds['payload_retention_s'])} ago), {due.messages} messages to "
               f"delete (ended over {_span(seconds['row_retention_s'])} ago); "
               "`mailrelay db purge` runs it")


@command.command("purge")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@dry_run_option
@json_option
def purge(yes: bool, dry_run: bool, as_json: bool) -> None:
    """Run the retention job now, as beat does every 5 minutes, until nothing is due.

    Messages that ended (sent, failed, rejected) over MAILRELAY_ROW_RETENTION ago are
    deleted with their attempts and audit; those that ended over
    MAILRELAY_PAYLOAD_RETENTION ago lose their content (payload_purged_at in `status`; a
    replay of one is refused as payload_purged). Messages in flight are never touched.
    In batches, one short transaction each: safe while workers run, and safe to run again.

    --json prints {"dry_run": false, "payload_retention_s", "row_retention_s",
    "payloads_dropped", "messages_deleted", "attempts_deleted", "audit_deleted"}.
    --dry-run removes nothing and prints what would go; --json then gives
    "payloads_to_drop" and "messages_to_delete", "dry_run": true.
    Deleting is for good: it says what it will remove, under which retention (this
    shell's MAILRELAY_PAYLOAD_RETENTION and MAILRELAY_ROW_RETENTION, which must be the
    deployment's), and asks unless --yes (without a terminal, --yes is required).
    """
    from mailrelay.store import retention

    policy = retention.Retention.configured()
    seconds = _retention_seconds()
    due = retention.due(policy)
    if dry_run:
        if as_json:
            emit_json({"dry_run": True, **seconds, "payloads_to_drop": due.payloads,
                       "messages_to_delete": due.messages})
        else:
            click.echo(f"would delete {due.messages} messages and drop {due.payloads} "
                       "payloads (dry run: nothing removed)")
        return
    if (due.messages or due.payloads) and not yes:
        what = (f"delete {due.messages} messages and drop {due.payloads} payloads (retention: "
                f"payloads {seconds['payload_retention_s'] / 86400:g} d, rows "
                f"{seconds['row_retention_s'] / 86400:g} d, from this shell's settings)")
        if not sys.stdin.isatty():
            raise Exit(f"not going to {what} without confirmation: run in a terminal or pass "
                       "--yes", USAGE)
        click.confirm(f"{what[0].upper()}{what[1:]}?", abort=True, err=True)
    removed = retention.purge(policy)
    if as_json:
        emit_json({"dry_run": False, **seconds, "payloads_dropped": removed.payloads,
                   "messages_deleted": removed.messages, "attempts_deleted": removed.attempts,
                   "audit_deleted": removed.audit})
    else:
        click.echo(f"deleted {removed.messages} messages ({removed.attempts} attempts, "
                   f"{removed.audit} audit rows) and dropped {removed.payloads} payloads")
