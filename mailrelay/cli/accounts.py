"""`mailrelay accounts`: register, list, check and remove sending accounts.

Secrets (client secret, refresh token) come from MAILRELAY_CLIENT_SECRET and
MAILRELAY_REFRESH_TOKEN or a hidden prompt; never from argv, which other users of the
machine can read in the process list.
"""

from __future__ import annotations

import sys

import click

from mailrelay import providers
from mailrelay.cli.exits import FAILED, NOT_FOUND, USAGE, Exit
from mailrelay.cli.output import emit_json, json_option, table
from mailrelay.errors import ValidationError
from mailrelay.store import accounts

DIAGNOSES = {
    "auth_revoked": "the grant was revoked or has expired: the mailbox owner must connect it again",
    "invalid_credentials": "the OAuth client id or secret is wrong (or the secret key changed)",
    "permission_denied": "the grant lacks a needed scope, or the mailbox may not send",
    "network_error": "the token endpoint could not be reached",
    "provider_unavailable": "the provider's token endpoint failed; try again later",
    "provider_timeout": "the token endpoint did not answer in time",
    "rate_limited": "the provider is rate-limiting this client",
    "account_disabled": "the account is disabled",
}


@click.group("accounts")
def command() -> None:
    """Register, list, check and remove sending accounts."""


def _secret(value: str, env: str, what: str) -> str:
    if value:
        return value
    if sys.stdin.isatty():
        return str(click.prompt(what, hide_input=True))
    raise Exit(f"{what}: set {env} or run in a terminal to be prompted (never on the command line)",
               USAGE)


@command.command("add")
@click.argument("provider", type=click.Choice(providers.names()))
@click.argument("address")
@click.option("--client-id", help="OAuth client id (Gmail, Microsoft); the login (SMTP).")
@click.option("--tenant", help="Entra ID tenant (Microsoft); the server, e.g. smtp://host:587 (SMTP).")
@click.option("--app-only", is_flag=True, help="Client credentials instead of a user's grant (Microsoft).")
@click.option("--rate-limit", type=click.IntRange(1, 100_000), metavar="PER_MINUTE",
              help="Override the provider's documented sending rate for this mailbox.")
@json_option
def add(provider: str, address: str, client_id: str | None, tenant: str | None, app_only: bool,
        rate_limit: int | None, as_json: bool) -> None:
    """Register ADDRESS as a sending account of PROVIDER.

    OAuth providers need --client-id, and read the client secret and the refresh token from
    MAILRELAY_CLIENT_SECRET and MAILRELAY_REFRESH_TOKEN (or a hidden prompt).
    """
    from mailrelay.config import get_settings

    secret = refresh = None
    adapter = providers.adapter_class(provider)
    if adapter.uses_oauth and not client_id:
        raise Exit(f"{provider} accounts need --client-id", USAGE)
    settings = get_settings()
    # A secret goes with a client id (an SMTP account without a login has neither).
    if "client_secret" in adapter.account_secrets and client_id:
        secret = _secret(settings.client_secret, "MAILRELAY_CLIENT_SECRET", "client secret")
    if "refresh_token" in adapter.account_secrets and not app_only:
        refresh = _secret(settings.refresh_token, "MAILRELAY_REFRESH_TOKEN", "refresh token")
    try:
        adapter().check_account(client_id=client_id, tenant=tenant, app_only=app_only)
        row = accounts.add(provider, address, client_id=client_id, tenant=tenant, app_only=app_only,
                           rate_limit_per_minute=rate_limit, client_secret=secret,
                           refresh_token=refresh)
    except (accounts.AccountExists, ValidationError) as err:
        raise Exit(str(err), FAILED) from None
    if as_json:
        emit_json(row)
    else:
        click.echo(f"added {row['address']} ({row['provider']}, {row['state']})")


@command.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List accounts with their state and health; never a secret."""
    rows = accounts.list_all()
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["address", "provider", "state", "last_success_at", "last_refresh_at",
                     "consecutive_failures", "rate_limit_per_minute"], title="accounts")


@command.command("check")
@click.argument("address")
@json_option
def check(address: str, as_json: bool) -> None:
    """Refresh ADDRESS's access token once and say in plain words what is wrong, if anything."""
    from mailrelay.auth.tokens import manager
    from mailrelay.errors import MailrelayError

    try:
        creds = accounts.credentials(address)
    except accounts.AccountNotFound as err:
        raise Exit(str(err), NOT_FOUND) from None
    adapter = providers.get(creds.provider)
    result: dict[str, object] = {"address": creds.address, "provider": creds.provider,
                                 "state": creds.state, "ok": True, "code": None,
                                 "diagnosis": "the account can send"}
    if adapter.uses_oauth:
        tokens = manager()
        tokens.forget(creds.id)
        try:
            tokens.get(creds, adapter.refresh)
            result["diagnosis"] = "a new access token was issued"
        except MailrelayError as err:
            result.update(ok=False, code=err.code,
                          diagnosis=DIAGNOSES.get(err.code, str(err)),
                          state=accounts.credentials(address).state)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{result['address']}: {'ok' if result['ok'] else 'NOT OK'} - {result['diagnosis']}")
    if not result["ok"]:
        raise Exit(f"{result['code']}", FAILED)


@command.command("remove")
@click.argument("address")
@click.option("--force", is_flag=True, help="If it has messages: disable it and erase its secrets.")
def remove(address: str, force: bool) -> None:
    """Remove ADDRESS (an account with messages is only disabled, with --force)."""
    try:
        done = accounts.remove(address, force=force)
    except accounts.AccountNotFound as err:
        raise Exit(str(err), NOT_FOUND) from None
    except accounts.AccountExists as err:
        raise Exit(str(err), FAILED) from None
    click.echo(f"{address}: {done}")


@command.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every stored secret with the first key of MAILRELAY_SECRET_KEY.

    To rotate: put the new key first (`new,old`), run this, then drop the old key.
    """
    click.echo(f"re-encrypted {accounts.rotate_key()} secrets")


@command.command("genkey")
def genkey() -> None:
    """Print a new key for MAILRELAY_SECRET_KEY."""
    from mailrelay.auth.crypto import new_key

    click.echo(new_key())
