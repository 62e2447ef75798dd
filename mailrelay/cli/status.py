"""`mailrelay status ID`: one message's state, attempts and history; no content.

The exit code says the state, so that a script needs no JSON to know how it ended:
0 sent, 1 failed or rejected, 4 still in flight (queued, sending, retrying; after
``--wait`` if given), 3 no such message.
"""

from __future__ import annotations

import time
from typing import Any

import click

from mailrelay.cli.exits import FAILED, IN_FLIGHT, NOT_FOUND, OK, Exit
from mailrelay.cli.output import emit_json, json_option, table
from mailrelay.store.states import FINAL

# How often a wait looks again; a message's state lives in the database, not in an event.
POLL_SECONDS = 0.2
EXIT_BY_STATE = {"sent": OK, "failed": FAILED, "rejected": FAILED}


def wait_for_end(message_id: str, seconds: float) -> dict[str, Any] | None:
    """The message's status once it is sent, failed or rejected, or when ``seconds`` end.
    The store's builder, as mailrelay.client.status uses it (without importing Celery)."""
    from mailrelay.store.outbox import status

    deadline = time.monotonic() + seconds
    while True:
        info = status(message_id)
        if info is None or info["state"] in FINAL or time.monotonic() >= deadline:
            return info
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@click.command("status")
@click.argument("message_id")
@click.option("--wait", type=click.FloatRange(0), default=0, metavar="SECONDS",
              help="Wait up to SECONDS for the message to be sent, failed or rejected.")
@json_option
def command(message_id: str, wait: float, as_json: bool) -> None:
    """Show the state of message MESSAGE_ID, every attempt (oldest first) and its history.

    Exit codes: 0 sent · 1 failed or rejected · 3 no such message · 4 still queued,
    sending or retrying (after --wait). `--json` prints what mailrelay.client.status(ID)
    returns.
    """
    info = wait_for_end(message_id, wait)
    if info is None:
        raise Exit(f"no message {message_id}", NOT_FOUND)
    if as_json:
        emit_json(info)
    else:
        _show(info)
    code = EXIT_BY_STATE.get(info["state"], IN_FLIGHT)
    if code != OK:
        raise click.exceptions.Exit(code)


def _show(info: dict[str, Any]) -> None:
    for key in ("id", "state", "error_code", "error_detail", "provider", "account",
                "message_id_header", "provider_message_id", "created_at", "sent_at",
                "next_attempt_at", "payload_purged_at"):
        if info.get(key) is not None:
            click.echo(f"{key:>20}: {info[key]}")
    route = info.get("route")
    if route:
        via = f" through {info['via']}" if info.get("via") else ""
        click.echo(f"{'route':>20}: {route.get('decision')}{via} ({route.get('reason')})")
    if info.get("html_removed"):
        click.echo(f"{'html':>20}: sanitized, {_plural(info['html_removed'], 'thing')} removed")
    if info["attempts"]:
        table(info["attempts"], ["number", "started_at", "outcome", "error_code", "latency_ms",
                                 "worker", "detail"], title="attempts")
    table(info["history"], ["at", "action", "from_state", "to_state", "code", "actor", "reason"],
          title="history")
    if info.get("notify"):
        click.echo(f"{'notify':>20}: {info['notify']['task']} on {info['notify']['queue']}")
    if info.get("notifications"):
        table(info["notifications"], ["outcome", "replays", "state", "created_at",
                                      "published_at", "tries", "last_error"],
              title="outcome notifications")
