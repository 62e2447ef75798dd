"""`mailrelay failed`, `rejected` and `replay`: find failed messages, send them again; see
what intake refused.

Only `failed` messages are replayed; a `sent` one is never sent again. Each replay is
recorded in the audit table with the operator's name (MAILRELAY_OPERATOR, else the login
name) and the reason given.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mailrelay import providers
from mailrelay import replay as replay_plan
from mailrelay.cli.exits import FAILED, NOT_FOUND, UNAVAILABLE, USAGE, Exit
from mailrelay.cli.output import emit_json, json_option, table
from mailrelay.config import get_settings, operator_name
from mailrelay.errors import CODES
from mailrelay.store import oncall
from mailrelay.store.outbox import utcnow

# Rows a table shows before it says how many more there are (--json lists all).
SHOWN = 50
_SPAN = re.compile(r"(\d+)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Since(click.ParamType[dt.datetime, Any]):
    """An ISO 8601 time (UTC unless it carries an offset) or a span back from now."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        span = _SPAN.fullmatch(text)
        if span:
            return utcnow() - dt.timedelta(seconds=int(span[1]) * _UNIT_SECONDS[span[2]])
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r}: give an ISO time (2026-11-25T14:00, UTC unless it has an "
                      "offset) or a span back from now (30m, 2h, 1d)", param, ctx)
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _code(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value not in CODES:
        hint = difflib.get_close_matches(value, list(CODES), n=1)
        raise click.BadParameter(f"unknown error code {value!r}"
                                 + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return value


F = TypeVar("F", bound=Callable[..., Any])


def _filters(limit_default: int | None, limit_help: str) -> Callable[[F], F]:
    options = [
        click.option("--provider", type=click.Choice(providers.names()), help="Only this provider."),
        click.option("--account", metavar="ADDRESS", help="Only messages from this account."),
        click.option("--code", metavar="CODE", callback=_code,
                     help="Only this error code (see the README's error codes)."),
        click.option("--since", type=Since(), help="Failed (rejected) at or after TIME: ISO 8601 "
                     "(UTC unless it has an offset) or a span back from now: 30m, 2h, 1d."),
        click.option("--limit", type=click.IntRange(1, 1_000_000), default=limit_default,
                     show_default=limit_default is not None, help=limit_help),
    ]

    def apply(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


FAILED_COLUMNS = ["id", "failed_at", "account", "provider", "error_code", "attempts", "verify",
                  "replays", "error_detail"]


@click.command("failed")
@_filters(oncall.DEFAULT_LIMIT, "At most N messages, newest first.")
@json_option
def failed(provider: str | None, account: str | None, code: str | None, since: dt.datetime | None,
           limit: int, as_json: bool) -> None:
    """List failed messages, newest first, with their error; no content.

    `verify` marks a message whose last attempt may have reached the provider: a replay
    asks the provider before sending it. Exit code 0, also when none match.
    """
    rows = oncall.failed(provider=provider, account=account, code=code, since=since, limit=limit)
    _listing(rows, "failed", FAILED_COLUMNS, as_json)


REJECTED_COLUMNS = ["id", "rejected_at", "account", "error_code", "error_detail"]


@click.command("rejected")
@_filters(oncall.DEFAULT_LIMIT, "At most N messages, newest first.")
@json_option
def rejected(provider: str | None, account: str | None, code: str | None,
             since: dt.datetime | None, limit: int, as_json: bool) -> None:
    """List requests refused at intake (state `rejected`), newest first, with the code and
    the detail of what was wrong; no content. They are never sent: fix the request and
    send it again. Exit code 0, also when none match.
    """
    rows = oncall.rejected(provider=provider, account=account, code=code, since=since,
                           limit=limit)
    _listing(rows, "rejected", REJECTED_COLUMNS, as_json)


def _listing(rows: list[dict[str, Any]], state: str, columns: list[str], as_json: bool) -> None:
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no {state} message matches")
    else:
        _table(rows, columns, title=f"{state} messages ({len(rows)}, newest first)")


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    table(rows[:SHOWN], columns, title=title)
    if len(rows) > SHOWN:
        click.echo(f"... and {len(rows) - SHOWN} more (--json lists them all)")


@click.command("replay")
@click.argument("message_ids", nargs=-1, metavar="[ID]...")
@_filters(None, "At most N messages, newest first (default: every match).")
@click.option("--reason", metavar="TEXT",
              help="Why; recorded in the audit table with your name. Required unless --dry-run.")
@click.option("--dry-run", is_flag=True, help="Show what would be sent again and why; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def replay(message_ids: tuple[str, ...], provider: str | None, account: str | None,
           code: str | None, since: dt.datetime | None, limit: int | None, reason: str | None,
           dry_run: bool, yes: bool, as_json: bool) -> None:
    """Send failed messages again: by ID, or every failed message matching the filters.

    Only `failed` messages are replayed (a `sent` one is never sent again; in-flight and
    rejected ones are skipped), each queued again with a fresh retry budget and its
    Message-ID unchanged; one whose last attempt may have reached the provider is looked up
    there first and sent only if the provider does not have it. Each replay is audited with
    the operator (MAILRELAY_OPERATOR, else the login name) and --reason. Shows what it
    will do, then asks unless --yes (without a terminal, --yes is required). Replaying the
    same messages twice is safe: the second run finds them no longer failed.

    A failed message whose content the retention job dropped (MAILRELAY_PAYLOAD_RETENTION
    after it failed) is refused with the code `payload_purged` (`refusal`, and
    `skipped_by_reason`); the others are still replayed.

    Exit codes: 0 every selected message was replayed or rightly skipped, also when no
    failed message matches the filters · 2 usage (ids and filters mixed, no --reason, no
    terminal without --yes) · 3 an ID names no message (the others are still replayed) ·
    1 declined at the prompt, or a message refused as `payload_purged` (the others are
    still replayed) · 69 the broker is away: the replayed messages are queued in the
    database (`result`: "replayed; not enqueued") and the reconciler enqueues them.
    """
    by_filter = any(v is not None for v in (provider, account, code, since, limit))
    if message_ids and by_filter:
        raise Exit("give message ids or filters (--code, --provider, --account, --since, "
                   "--limit), not both", USAGE)
    if not message_ids and not any(v is not None for v in (provider, account, code, since)):
        raise Exit("give message ids, or at least one of --code, --provider, --account, --since",
                   USAGE)
    if not dry_run and not (reason or "").strip():
        raise Exit("--reason is required: it is recorded in the audit table with your name", USAGE)
    candidates = replay_plan.select_for_replay(message_ids, provider=provider, account=account,
                                          code=code, since=since, limit=limit)
    chosen = [c for c in candidates if c.replay]
    operator = operator_name(get_settings())
    if not as_json:
        _show(candidates, by_filter)
    if dry_run:
        _report(candidates, {}, operator, reason, dry_run=True, as_json=as_json)
        return
    if chosen and not yes:
        if not sys.stdin.isatty():
            raise Exit(f"not replaying {len(chosen)} messages without confirmation: run in a "
                       "terminal or pass --yes", USAGE)
        click.confirm(f"Replay {len(chosen)} messages as {operator}?", abort=True, err=True)
    reason = str(reason).strip()
    oncall.record_run(operator=operator, reason=reason, code=code)
    results, broker_error = _replay_all(chosen, operator=operator, reason=reason)
    _report(candidates, results, operator, reason, dry_run=False, as_json=as_json)
    if broker_error is not None:
        from mailrelay.cli.failures import broker_trouble, reconciler_eta

        queued = sum(1 for r in results.values() if r == NOT_ENQUEUED)
        raise Exit(f"{broker_trouble(broker_error)}; {queued} replayed "
                   f"{'message is' if queued == 1 else 'messages are'} queued in the database "
                   f"and the reconciler enqueues them within about {reconciler_eta()} s",
                   UNAVAILABLE)


def _show(candidates: list[replay_plan.Candidate], by_filter: bool) -> None:
    if not candidates:
        click.echo("no failed message matches" if by_filter else "no messages given")
        return
    _table([c.as_dict() for c in candidates], ["id", "state", "account", "error_code", "verdict"],
           title="replay")


# What happened to a message a replay chose.
REPLAYED, NOT_ENQUEUED, RACED = "replayed", "replayed; not enqueued", "no longer failed"


def _replay_all(chosen: list[replay_plan.Candidate], *, operator: str,
                reason: str) -> tuple[dict[str, str], Exception | None]:
    """Replay each message, then put it on its provider's queue; what became of each, and
    the publish error if there was one. A publish that fails leaves the message queued in
    the database, where the reconciler finds it; after one failure the rest are not
    published either (the broker is down, and each try waits)."""
    from mailrelay.tasks.routing import enqueue_delivery

    results: dict[str, str] = {}
    broker_error: Exception | None = None
    console = Console(stderr=True)
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("replay", total=len(chosen))
        for candidate in chosen:
            if not oncall.replay(candidate.id, operator=operator, reason=reason):
                results[candidate.id] = RACED
            elif broker_error is None:
                try:
                    enqueue_delivery(candidate.id, str(candidate.provider))
                    results[candidate.id] = REPLAYED
                except Exception as err:  # any publish failure: the reconciler covers it
                    broker_error = err
                    results[candidate.id] = NOT_ENQUEUED
            else:
                results[candidate.id] = NOT_ENQUEUED
            progress.advance(task)
    return results, broker_error


def _report(candidates: list[replay_plan.Candidate], results: dict[str, str], operator: str,
            reason: str | None, *, dry_run: bool, as_json: bool) -> None:
    messages = []
    skipped: Counter[str] = Counter()
    for c in candidates:
        planned = "would replay" if c.replay else "skipped"
        result = planned if dry_run else results.get(c.id, "skipped")
        if result == "skipped":
            skipped[c.refusal or c.state or replay_plan.NOT_FOUND] += 1
        elif result == RACED:
            skipped[RACED] += 1
        messages.append({**c.as_dict(), "result": result})
    replayed = sum(1 for r in results.values() if r in (REPLAYED, NOT_ENQUEUED))
    would = sum(c.replay for c in candidates)
    summary = {"dry_run": dry_run, "operator": operator, "reason": reason,
               "replayed": replayed, "would_replay": would if dry_run else None,
               "skipped": sum(skipped.values()), "skipped_by_reason": dict(skipped),
               "not_enqueued": sum(1 for r in results.values() if r == NOT_ENQUEUED),
               "messages": messages}
    if as_json:
        emit_json(summary)
    else:
        why = ", ".join(f"{count} {what}" for what, count in skipped.most_common())
        done = f"dry run, nothing changed: would replay {would}" if dry_run else f"replayed {replayed}"
        click.echo(f"{done}, skipped {summary['skipped']}" + (f" ({why})" if why else ""))
    if any(c.state is None for c in candidates):
        raise Exit("some ids name no message", NOT_FOUND)
    purged = skipped[replay_plan.PAYLOAD_PURGED]
    if purged:
        # Not a skip that is right (a sent message): the message asked for cannot be sent.
        raise Exit(f"{purged} failed {'message' if purged == 1 else 'messages'} cannot be "
                   "replayed: the content was dropped after MAILRELAY_PAYLOAD_RETENTION "
                   f"({replay_plan.PAYLOAD_PURGED}); the producer must send it again", FAILED)
