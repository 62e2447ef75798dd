"""`mailrelay accounts`: register and list sending accounts."""

from __future__ import annotations

import click

from mailrelay import providers
from mailrelay.cli.exits import FAILED, Exit
from mailrelay.cli.output import emit_json, json_option, table
from mailrelay.errors import ValidationError
from mailrelay.store import accounts


@click.group("accounts")
def command() -> None:
    """Register, list and inspect sending accounts."""


@command.command("add")
@click.argument("provider", type=click.Choice(providers.names()))
@click.argument("address")
@click.option("--client-id", help="OAuth client id (Gmail and Microsoft).")
@click.option("--tenant", help="Entra ID tenant (Microsoft).")
@click.option("--app-only", is_flag=True, help="Client credentials instead of a user's grant (Microsoft).")
@click.option("--rate-limit", type=click.IntRange(1, 100_000), metavar="PER_MINUTE",
              help="Override the provider's documented sending rate for this mailbox.")
@json_option
def add(provider: str, address: str, client_id: str | None, tenant: str | None, app_only: bool,
        rate_limit: int | None, as_json: bool) -> None:
    """Register ADDRESS as a sending account of PROVIDER."""
    try:
        row = accounts.add(provider, address, client_id=client_id, tenant=tenant,
                           app_only=app_only, rate_limit_per_minute=rate_limit)
    except (accounts.AccountExists, ValidationError) as err:
        raise Exit(str(err), FAILED) from None
    if as_json:
        emit_json(row)
    else:
        click.echo(f"added {row['address']} ({row['provider']}, {row['state']})")


@command.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List accounts with their state; never a secret."""
    rows = accounts.list_all()
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["address", "provider", "state", "last_success_at", "consecutive_failures",
                     "rate_limit_per_minute"], title="accounts")
