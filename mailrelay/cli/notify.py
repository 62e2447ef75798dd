"""`mailrelay notify`: outcome notifications still to be published, and publishing them now.

A notification is pending from the moment its message ended until the broker accepted
the outcome task. The reconciler publishes the due ones every 15 s; `notify pending`
lists what is waiting and why (``last_error``: ``queue_not_found``, ``broker_unavailable``,
``publish_failed``), `notify publish` makes them all due and publishes them now (after
the producer declared its queue, say), and `notify drop --queue Q` gives up those of a
queue that will never exist (audited). Ids and codes only: never metadata or content.
"""

from __future__ import annotations

import click

from mailrelay.cli.exits import FAILED, USAGE, Exit
from mailrelay.cli.output import dry_run_option, emit_json, json_option, table


@click.group("notify")
def command() -> None:
    """Outcome notifications: what is still to be published to producers."""


@command.command("pending")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True,
              help="Show at most this many, oldest first.")
@json_option
def pending(limit: int, as_json: bool) -> None:
    """Notifications not yet accepted by the broker, oldest first: the message, its
    outcome, where it goes, how many tries failed and the last failure's code."""
    from mailrelay.store import notifications

    rows = notifications.pending(limit=limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no outcome notification is pending")
        return
    table(rows, ["notification_id", "message_id", "outcome", "replays", "task", "queue",
                 "age_seconds", "tries", "last_error", "next_try_at"],
          title="pending outcome notifications")


@command.command("publish")
@dry_run_option
@json_option
def publish(dry_run: bool, as_json: bool) -> None:
    """Publish every pending notification now instead of at its next try. Exit 1 when
    some that were pending when it started are still pending (`notify pending` says why);
    ones that workers wrote meanwhile do not count."""
    from mailrelay.notify import republish_due
    from mailrelay.store import notifications
    from mailrelay.tasks.outcomes import publish_outcome

    started = notifications.clock()
    if dry_run:
        waiting = notifications.count_pending()
        if as_json:
            emit_json({"dry_run": True, "would_publish": waiting})
        else:
            click.echo(f"would publish {waiting} pending outcome notifications")
        return
    made_due = notifications.make_due()
    published = republish_due(publish_outcome, seconds=60.0)
    left = notifications.count_pending(created_before=started)
    if as_json:
        emit_json({"due": made_due, "published": published, "pending": left})
    else:
        click.echo(f"published {published} of {made_due} pending outcome notifications; "
                   f"{left} still pending")
    if left:
        raise Exit(f"{left} outcome notifications are still pending", FAILED)


@command.command("drop")
@click.option("--queue", required=True, help="The producer queue whose notifications to give up.")
@click.option("--reason", metavar="TEXT", help="Why; recorded in the audit table with your name.")
@dry_run_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def drop(queue: str, reason: str | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Give up the pending notifications to QUEUE, for a queue that will never exist (a
    producer retired, a typo in its notify): they are never published, each is audited
    with your name and --reason, and their messages may then be deleted by the retention.
    The producer is not told those outcomes: prefer declaring the queue and `publish`."""
    import sys

    from mailrelay.config import get_settings, operator_name
    from mailrelay.store import notifications

    waiting = notifications.count_pending(queue=queue)
    if dry_run:
        if as_json:
            emit_json({"dry_run": True, "queue": queue, "would_drop": waiting})
        else:
            click.echo(f"would drop {waiting} pending outcome notifications to {queue}")
        return
    if not (reason or "").strip():
        raise Exit("--reason is required: it is recorded in the audit table with your name",
                   USAGE)
    operator = operator_name(get_settings())
    if waiting and not yes:
        if not sys.stdin.isatty():
            raise Exit(f"not dropping {waiting} notifications without confirmation: run in a "
                       "terminal or pass --yes", USAGE)
        click.confirm(f"Drop {waiting} pending outcome notifications to {queue} as {operator}? "
                      "The producer will never hear those outcomes", abort=True, err=True)
    dropped = notifications.drop(queue, operator=operator, reason=str(reason).strip())
    if as_json:
        emit_json({"queue": queue, "dropped": dropped})
    else:
        click.echo(f"dropped {dropped} pending outcome notifications to {queue}")
