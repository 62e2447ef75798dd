"""`mailrelay auth`: connect a mailbox by consent (OAuth authorization code + PKCE).

The client secret comes from MAILRELAY_CLIENT_SECRET or a hidden prompt, never argv.
The consent URL is printed, and opened in a browser only where one exists (a desktop
session); on a server, open it on any machine that can reach the loopback redirect, e.g.
through `ssh -L`.
"""

from __future__ import annotations

import os
import sys
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from mailrelay import providers
from mailrelay.auth import accounts
from mailrelay.cli.exits import FAILED, NOT_FOUND, USAGE, Exit
from mailrelay.cli.output import dry_run_option, emit_json, json_option

LOOPBACK = "127.0.0.1"  # where the consent listens for the browser's redirect
CONSENT_PROVIDERS = [name for name in providers.names()
                     if providers.adapter_class(name).supports_consent]


@click.group("auth")
def command() -> None:
    """Connect mailboxes by consent: sign in, approve, and mailrelay keeps the grant."""


def _options(func: click.decorators.FC) -> click.decorators.FC:
    func = click.option("--timeout", type=click.FloatRange(5, 3600), default=300, show_default=True,
                        help="Seconds to wait for the consent.")(func)
    func = click.option("--no-browser", is_flag=True,
                        help="Only print the consent URL, even where a browser exists.")(func)
    func = dry_run_option(func)
    return json_option(func)


@command.command("connect")
@click.argument("provider", type=click.Choice(CONSENT_PROVIDERS))
@click.argument("address")
@click.option("--client-id", required=True, help="The OAuth client (app) id.")
@click.option("--tenant", help="Entra ID tenant (Microsoft; default `common`).")
@_options
def connect(provider: str, address: str, client_id: str, tenant: str | None, timeout: float,
            no_browser: bool, dry_run: bool, as_json: bool) -> None:
    """Connect ADDRESS's PROVIDER mailbox: sign in as ADDRESS and approve sending.

    Creates the account, or gives an existing one the new grant. Exit 1 if the consent is
    refused (or ADDRESS is another provider's account), 2 for settings it cannot use.

    --json prints {"address", "provider", "state", "created", "resumed", "scopes"}. With
    --dry-run it makes the same checks, then prints what it would do and stops before
    listening, opening a browser or contacting the provider; --json then prints
    {"address", "provider", "client_id", "tenant", "created", "listen", "timeout",
    "dry_run": true}.
    """
    tenant = tenant or providers.adapter_class(provider).default_tenant
    secret = _client_secret()
    _consent(provider, address, client_id, secret, tenant, timeout, no_browser, as_json,
             dry_run=dry_run)


@command.command("reconnect")
@click.argument("address")
@_options
def reconnect(address: str, timeout: float, no_browser: bool, dry_run: bool,
              as_json: bool) -> None:
    """Run the consent again for ADDRESS (revoked or expired grant) and resume its parked
    messages. Uses the account's client id, tenant and stored client secret, unless
    MAILRELAY_CLIENT_SECRET gives a new one. Exit 3 if there is no such account, 2 if it
    is not connected by consent.

    --json and --dry-run as for `auth connect`.
    """
    from mailrelay.config import get_settings

    try:
        creds = accounts.credentials(address)
    except accounts.AccountNotFound as err:
        raise Exit(str(err), NOT_FOUND) from None
    if creds.provider not in CONSENT_PROVIDERS or creds.app_only:
        raise Exit(f"{creds.address} is not connected by consent ({creds.provider}"
                   f"{', app-only' if creds.app_only else ''})", USAGE)
    secret = get_settings().client_secret or creds.client_secret
    if not (creds.client_id and secret):
        raise Exit(f"{creds.address} has no client id or secret stored; use `auth connect`", USAGE)
    _consent(creds.provider, creds.address, creds.client_id, secret, creds.tenant, timeout,
             no_browser, as_json, dry_run=dry_run)


def _client_secret() -> str:
    from mailrelay.config import get_settings

    secret = get_settings().client_secret
    if secret:
        return secret
    if sys.stdin.isatty():
        return str(click.prompt("client secret", hide_input=True))
    raise Exit("client secret: set MAILRELAY_CLIENT_SECRET or run in a terminal to be prompted",
               USAGE)


def _consent(provider: str, address: str, client_id: str, secret: str, tenant: str | None,
             timeout: float, no_browser: bool, as_json: bool, *, dry_run: bool = False) -> None:
    from mailrelay.auth import consent
    from mailrelay.cli import preflight

    # Where the grant will go, checked before anyone is sent to a consent page.
    preflight.check_database()
    preflight.check_secret_key(required=True)
    preflight.check_redis()
    adapter = providers.adapter_class(provider)()
    if dry_run:
        # The checks above and consent.plan are what the real run does before it listens
        # on 127.0.0.1 and prints the URL; nothing is contacted, opened or stored.
        with _consent_errors(consent):
            planned = consent.plan(adapter, address, client_id=client_id, tenant=tenant)
        _show_plan(planned, client_id, tenant, timeout, as_json)
        return

    def show(url: str) -> None:
        click.echo(f"Open this URL, sign in as {address} and approve:\n  {url}", err=as_json)
        if not no_browser and _browser_available():
            webbrowser.open(url)
        click.echo(f"waiting up to {timeout:.0f} s for the answer...", err=True)

    with _consent_errors(consent):
        done = consent.run(adapter, address, client_id=client_id, client_secret=secret,
                           tenant=tenant, timeout=timeout, show_url=show, enqueue=_enqueue)
    result = {"address": done.address, "provider": done.provider, "state": "active",
              "created": done.created, "resumed": done.resumed, "scopes": list(done.scopes)}
    if as_json:
        emit_json(result)
    else:
        what = "connected" if done.created else "reconnected"
        click.echo(f"{done.address}: {what} ({done.provider}); {done.resumed} parked messages "
                   "resumed")


@contextmanager
def _consent_errors(consent: Any) -> Iterator[None]:
    """A refused consent exits 1, settings the provider cannot use 2."""
    from mailrelay.errors import ValidationError

    try:
        yield
    except consent.ConsentError as err:
        raise Exit(f"consent refused ({err.kind}): {err}", FAILED) from None
    except ValidationError as err:
        raise Exit(str(err), USAGE) from None


def _show_plan(planned: Any, client_id: str, tenant: str | None, timeout: float,
               as_json: bool) -> None:
    """What the consent would do (see the commands' help for the JSON)."""
    if as_json:
        emit_json({"address": planned.address, "provider": planned.provider,
                   "client_id": client_id, "tenant": tenant, "created": planned.creates,
                   "listen": LOOPBACK, "timeout": timeout, "dry_run": True})
        return
    what = "create the account" if planned.creates else "give the account the new grant"
    click.echo(f"would connect {planned.address} ({planned.provider}, client id {client_id}"
               + (f", tenant {tenant}" if tenant else "") + "): print a consent URL, listen "
               f"on {LOOPBACK} for up to {timeout:.0f} s for the answer, then {what} "
               "(dry run: nothing listened, opened, contacted or changed)")


def _browser_available() -> bool:
    """A browser is opened only in a desktop session: on a server, webbrowser would start
    a text browser in this terminal."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _enqueue(message_id: str, provider: str) -> None:
    """Resumed messages go straight to their queue; if the broker is down, the reconciler
    finds them within a minute, so a failure here is only reported."""
    from mailrelay.tasks.routing import enqueue_delivery

    try:
        enqueue_delivery(message_id, provider)
    except Exception as err:
        click.echo(f"could not enqueue a resumed message ({type(err).__name__}); the "
                   "reconciler will", err=True)
