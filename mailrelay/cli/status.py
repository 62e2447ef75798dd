"""`mailrelay status ID`: one message's state, attempts and history; no content."""

from __future__ import annotations

import click

from mailrelay.cli.exits import NOT_FOUND, Exit
from mailrelay.cli.output import emit_json, json_option, table
from mailrelay.store import outbox


@click.command("status")
@click.argument("message_id")
@json_option
def command(message_id: str, as_json: bool) -> None:
    """Show the state of message MESSAGE_ID, every attempt (oldest first) and its history."""
    info = outbox.status(message_id)
    if info is None:
        raise Exit(f"no message {message_id}", NOT_FOUND)
    if as_json:
        emit_json(info)
        return
    for key in ("id", "state", "error_code", "error_detail", "provider", "account",
                "message_id_header", "provider_message_id", "created_at", "sent_at",
                "next_attempt_at"):
        if info.get(key) is not None:
            click.echo(f"{key:>20}: {info[key]}")
    route = info.get("route")
    if route:
        via = f" through {info['via']}" if info.get("via") else ""
        click.echo(f"{'route':>20}: {route.get('decision')}{via} ({route.get('reason')})")
    if info.get("html_removed"):
        click.echo(f"{'html':>20}: sanitized, {info['html_removed']} things removed")
    if info["attempts"]:
        table(info["attempts"], ["number", "started_at", "outcome", "error_code", "latency_ms",
                                 "worker", "detail"], title="attempts")
    table(info["history"], ["at", "action", "from_state", "to_state", "code", "actor", "reason"],
          title="history")
