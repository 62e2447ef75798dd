"""`mailrelay accounts`: register, list, check, configure and remove sending accounts.

Secrets (client secret, refresh token) come from MAILRELAY_CLIENT_SECRET and
MAILRELAY_REFRESH_TOKEN or a hidden prompt; never from argv, which other users of the
machine can read in the process list.
"""

from __future__ import annotations

import sys

import click

from mailrelay import providers
from mailrelay.auth import accounts
from mailrelay.cli.exits import FAILED, NOT_FOUND, USAGE, Exit
from mailrelay.cli.output import dry_run_option, emit_json, json_option, table
from mailrelay.errors import ValidationError

_DRY = "dry run: nothing changed"


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
@click.option("--html-policy", type=click.Choice(["off", "sanitize"]),
              help="HTML content policy for this account (default: MAILRELAY_HTML_POLICY).")
@dry_run_option
@json_option
def add(provider: str, address: str, client_id: str | None, tenant: str | None, app_only: bool,
        rate_limit: int | None, html_policy: str | None, dry_run: bool, as_json: bool) -> None:
    """Register ADDRESS as a sending account of PROVIDER.

    OAuth providers need --client-id, and read the client secret and the refresh token from
    MAILRELAY_CLIENT_SECRET and MAILRELAY_REFRESH_TOKEN (or a hidden prompt). Exit 1 if the
    account exists, 2 for a missing option or secret.

    --json prints the account (address, provider, state, client_id, tenant, ...; never a
    secret); with --dry-run the account as it would be, plus "dry_run": true.
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
    if secret or refresh:
        from mailrelay.cli import preflight

        # Stored under another key than the others, the new secrets would be unreadable
        # the day the right key is back: refuse a key that does not read what is stored.
        preflight.check_secret_key(required=True)
    try:
        adapter().check_account(client_id=client_id, tenant=tenant, app_only=app_only)
        row = accounts.add(provider, address, client_id=client_id, tenant=tenant, app_only=app_only,
                           rate_limit_per_minute=rate_limit, client_secret=secret,
                           refresh_token=refresh, html_policy=html_policy, preview=dry_run)
    except (accounts.AccountExists, ValidationError) as err:
        raise Exit(str(err), FAILED) from None
    if as_json:
        emit_json({**row, "dry_run": True} if dry_run else row)
        return
    if dry_run:
        click.echo(f"would add {row['address']} ({row['provider']}, {row['state']}); "
                   f"{_DRY}")
        return
    click.echo(f"added {row['address']} ({row['provider']}, {row['state']})")
    if refresh is not None:
        # A grant obtained elsewhere is stored as given: nothing has asked the provider yet.
        click.echo(f"the refresh token is not tested yet: run `mailrelay accounts check "
                   f"{row['address']}`")


@command.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List accounts with their state and health; never a secret."""
    rows = [_with_rate(row) for row in accounts.list_all()]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["rate_limit"] = f"{row['rate_limit_per_minute_effective'] or '-'}/min" + (
            "" if row["rate_limit_per_minute"] else " (default)")
        row["html"] = row["html_policy"] or "(global)"
    table(rows, ["address", "provider", "state", "last_success_at", "last_refresh_at",
                 "consecutive_failures", "last_error_code", "rate_limit", "html"], title="accounts")


def _with_rate(row: dict[str, object]) -> dict[str, object]:
    """The rate that applies: the account's override, else the provider's documented one."""
    default = providers.capabilities(str(row["provider"])).sends_per_minute
    row["rate_limit_per_minute_default"] = default
    row["rate_limit_per_minute_effective"] = row["rate_limit_per_minute"] or default
    return row


@command.command("set")
@click.argument("address")
@click.option("--rate-limit", metavar="PER_MINUTE|default",
              help="Sends per minute for this mailbox, or `default` for the provider's rate.")
@click.option("--html-policy", type=click.Choice(["off", "sanitize", "default"]),
              help="HTML content policy for this account; `default` follows MAILRELAY_HTML_POLICY.")
@dry_run_option
@json_option
def set_(address: str, rate_limit: str | None, html_policy: str | None, dry_run: bool,
         as_json: bool) -> None:
    """Change ADDRESS's per-account settings. Exit 3 if there is no such account, 2 for a
    bad or missing option.

    --json prints the account as `accounts list --json` does, with
    rate_limit_per_minute_default and rate_limit_per_minute_effective; with --dry-run the
    account as it would be, plus "dry_run": true and "changes" ({setting: {"from", "to"}}).
    """
    changes: dict[str, object] = {}
    if rate_limit is not None:
        changes["rate_limit_per_minute"] = _rate(rate_limit)
    if html_policy is not None:
        changes["html_policy"] = None if html_policy == "default" else html_policy
    if not changes:
        raise Exit("nothing to change: give --rate-limit or --html-policy", USAGE)
    try:
        before = _with_rate(accounts.health(address)) if dry_run else {}
        row = _with_rate(accounts.configure(address, preview=dry_run,
                                            **changes))  # type: ignore[arg-type]
    except accounts.AccountNotFound as err:
        raise Exit(str(err), NOT_FOUND) from None
    if not dry_run:
        if as_json:
            emit_json(row)
        else:
            click.echo(f"{row['address']}: rate limit "
                       f"{row['rate_limit_per_minute_effective'] or 'none'}/min, HTML policy "
                       f"{row['html_policy'] or 'global'}")
        return
    shown = {"rate_limit_per_minute": ("rate limit", _rate_words),
             "html_policy": ("HTML policy", lambda r: str(r["html_policy"] or "global"))}
    diff = {name: {"from": before[name], "to": row[name]} for name in changes}
    if as_json:
        emit_json({**row, "dry_run": True, "changes": diff})
        return
    words = [f"{label} {show(before)} -> {show(row)}"
             + ("" if before[name] != row[name] else " (unchanged)")
             for name, (label, show) in shown.items() if name in changes]
    click.echo(f"{row['address']}: would set {', '.join(words)} ({_DRY})")


def _rate_words(row: dict[str, object]) -> str:
    effective = row["rate_limit_per_minute_effective"]
    return ((f"{effective}/min" if effective else "no limit")
            + ("" if row["rate_limit_per_minute"] else " (provider default)"))


def _rate(value: str) -> int | None:
    if value == "default":
        return None
    if not value.isdigit() or not 1 <= int(value) <= 100_000:
        raise Exit("--rate-limit: a number of sends per minute from 1 to 100000, or `default`",
                   USAGE)
    return int(value)


@command.command("check")
@click.argument("address")
@json_option
def check(address: str, as_json: bool) -> None:
    """Refresh ADDRESS's token, probe the mailbox and say in plain words what is wrong."""
    from mailrelay.auth.health import diagnose

    try:
        creds = accounts.credentials(address)
        health = accounts.health(address)
    except accounts.AccountNotFound as err:
        raise Exit(str(err), NOT_FOUND) from None
    found = diagnose(creds, health, providers.get(creds.provider))
    result = {"address": creds.address, "provider": creds.provider,
              "state": accounts.health(address)["state"], **found.as_dict()}
    if as_json:
        emit_json(result)
    else:
        verdict = "ok" if found.ok else f"NOT OK ({found.kind})"
        click.echo(f"{creds.address}: {verdict} - {found.words}")
        if found.detail and not found.ok:
            click.echo(f"  provider said: {found.detail}")
    if not found.ok:
        raise Exit(found.kind, FAILED)


@command.command("remove")
@click.argument("address")
@click.option("--force", is_flag=True, help="If it has messages: disable it and erase its secrets.")
@dry_run_option
@json_option
def remove(address: str, force: bool, dry_run: bool, as_json: bool) -> None:
    """Remove ADDRESS (an account with messages is only disabled, with --force). Exit 3 if
    there is no such account, 1 if it has messages and no --force.

    --json prints {"address", "done"} (`removed` or `disabled`); with --dry-run what would
    be done, plus "dry_run": true.
    """
    try:
        done = accounts.remove(address, force=force, preview=dry_run)
    except accounts.AccountNotFound as err:
        raise Exit(str(err), NOT_FOUND) from None
    except accounts.AccountExists as err:
        raise Exit(str(err), FAILED) from None
    if as_json:
        emit_json({"address": accounts.normalize_address(address), "done": done,
                   **({"dry_run": True} if dry_run else {})})
    else:
        what = {"removed": "removed", "disabled": "disabled and its secrets erased (it has "
                "messages: they and their history stay)"}[done]
        click.echo(f"{address}: would be {what} ({_DRY})" if dry_run else f"{address}: {done}")


@command.command("rotate-key")
@dry_run_option
@json_option
def rotate_key(dry_run: bool, as_json: bool) -> None:
    """Re-encrypt every stored secret with the first key of MAILRELAY_SECRET_KEY.

    To rotate: put the new key first (`new,old`), run this, then drop the old key. With
    --dry-run every secret is decrypted and re-encrypted in memory only: it proves the keys
    read them all, and stores nothing. A secret no key reads fails either way (exit 78).

    --json prints {"reencrypted": N}; with --dry-run N is how many would be, plus
    "dry_run": true.
    """
    count = accounts.rotate_key(preview=dry_run)
    noun = "secret" if count == 1 else "secrets"
    if as_json:
        emit_json({"reencrypted": count, **({"dry_run": True} if dry_run else {})})
    elif dry_run:
        click.echo(f"would re-encrypt {count} {noun}; every one is readable ({_DRY})")
    else:
        click.echo(f"re-encrypted {count} {noun}")


@command.command("genkey")
@json_option
def genkey(as_json: bool) -> None:
    """Print a new key for MAILRELAY_SECRET_KEY."""
    from mailrelay.auth.crypto import new_key

    if as_json:
        emit_json({"key": new_key()})
    else:
        click.echo(new_key())
