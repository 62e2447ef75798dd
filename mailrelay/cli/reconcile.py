"""`mailrelay reconcile`: run the outbox reconciler once, now, as beat does every 15 s.

For when beat is down, or after Redis lost its queues: every message `queued` or due
`retrying` and untouched for MAILRELAY_RECONCILE_AFTER seconds, or `sending` with an
expired lease, gets a new task. Publishing twice is harmless: the claim decides who sends.
Outcome notifications that are due (their worker could not publish them) are published.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import click

from mailrelay.cli.output import emit_json, json_option

# What a dry run lists at most.
SHOWN = 1000


@click.command("reconcile")
@click.option("--dry-run", is_flag=True, help="List what would be re-enqueued; change nothing.")
@json_option
def command(dry_run: bool, as_json: bool) -> None:
    """Re-enqueue every stranded message now (what beat's reconciler does)."""
    from mailrelay.config import get_settings

    settings = get_settings()
    if dry_run:
        from mailrelay.store import stranded

        _clock, found = stranded.find(after=dt.timedelta(seconds=settings.reconcile_after),
                                      lease=dt.timedelta(seconds=settings.lease_seconds),
                                      limit=SHOWN)
        by_state = Counter(item.state for item in found)
        result = {"dry_run": True, "would_enqueue": len(found), "by_state": dict(by_state),
                  "ids": [item.message_id for item in found]}
    else:
        from mailrelay.cli import preflight
        from mailrelay.tasks.control import reconcile_all

        preflight.check_broker()
        enqueued, published = reconcile_all()
        result = {"dry_run": False, "enqueued": enqueued, "notifications_published": published}
    if as_json:
        emit_json(result)
    elif dry_run:
        states = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items())) or "none"
        click.echo(f"would re-enqueue {len(found)} stranded messages ({states})")
    else:
        click.echo(f"re-enqueued {result['enqueued']} stranded messages; published "
                   f"{result['notifications_published']} due outcome notifications")
