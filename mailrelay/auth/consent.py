"""Connecting a mailbox by consent: the OAuth authorization code flow with PKCE.

An administrator runs `mailrelay auth connect`; this module

1. listens on a loopback address with a random port (RFC 8252, section 7.3) for the
   browser's redirect;
2. asks the provider's flow (Google: google-auth-oauthlib; Microsoft: MSAL, which both
   do PKCE with S256) for the consent URL, which the command prints (and opens in a
   browser when one exists);
3. waits, with a timeout, for the one redirect that carries a code;
4. checks the ``state`` it sent came back, then lets the flow redeem the code with its
   code verifier, and checks the signed-in mailbox is the one being connected;
5. stores the refresh token encrypted and marks the account active; a reconnect also
   resumes the messages parked while the grant was revoked.

Nothing is written before every check has passed: a refused consent changes no account.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from mailrelay.auth import accounts


class ConsentError(Exception):
    """The consent did not produce a usable grant; ``kind`` is stable, the text plain words."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class Granted:
    """What a redeemed code gave: the grant, and who signed in."""

    refresh_token: str
    signed_in: str
    scopes: tuple[str, ...]


class ConsentProvider(Protocol):
    """What consent needs of a provider adapter (``mailrelay.providers.base``), which the
    caller passes in: auth sits below the providers and does not import them."""

    @property
    def name(self) -> str:
        ...

    def check_account(self, *, client_id: str | None, tenant: str | None, app_only: bool) -> None:
        ...

    def consent_flow(self, *, client_id: str, client_secret: str, tenant: str | None,
                     redirect_uri: str, login_hint: str) -> ConsentFlow:
        ...


class ConsentFlow(Protocol):
    """One provider's authorization request (see the provider's ``consent_flow``)."""

    url: str
    state: str

    def finish(self, response: Mapping[str, str]) -> Granted:
        """Redeem the code of a redirect whose state was checked; raises ConsentError."""
        ...


# --- the loopback redirect -------------------------------------------------------------

_DONE_PAGE = (b"<!doctype html><meta charset=utf-8><title>mailrelay</title>"
              b"<p>mailrelay received the answer. You can close this window.</p>")


class LoopbackReceiver:
    """An HTTP listener on 127.0.0.1 with a random port that keeps the first redirect
    carrying ``code`` or ``error``; other requests (a favicon) get 404."""

    def __init__(self) -> None:
        self._answer: dict[str, str] | None = None
        self._arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                params = dict(parse_qsl(split.query, keep_blank_values=True))
                if split.path != "/" or not ({"code", "error"} & params.keys()):
                    self.send_error(404)
                    return
                receiver._receive(params)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(_DONE_PAGE)))
                self.end_headers()
                self.wfile.write(_DONE_PAGE)

            def log_message(self, format: str, *args: Any) -> None:
                """Silenced: the request line holds the authorization code."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="mailrelay-consent")
        self._thread.start()

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def _receive(self, params: dict[str, str]) -> None:
        if not self._arrived.is_set():
            self._answer = params
            self._arrived.set()

    def wait(self, timeout: float) -> dict[str, str]:
        if not self._arrived.wait(timeout) or self._answer is None:
            raise ConsentError("timeout", f"no answer from the browser within {timeout:.0f} s; "
                               "nothing was changed")
        return self._answer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the flow ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Connected:
    address: str
    provider: str
    created: bool  # a new account, or new secrets for an existing one
    resumed: int  # parked messages made due again
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Planned:
    """What a consent is about to do, known before anyone is sent to the provider."""

    address: str
    provider: str
    creates: bool  # no account yet: the consent will create it


def plan(adapter: ConsentProvider, address: str, *, client_id: str,
         tenant: str | None) -> Planned:
    """The checks a consent makes before it listens or shows a URL: the address and the
    client settings (``ValidationError``), and that an existing account is one of this
    provider (``ConsentError`` wrong_provider). It reads the account and contacts nobody:
    `auth connect --dry-run` is this alone."""
    address = accounts.normalize_address(address)
    adapter.check_account(client_id=client_id, tenant=tenant, app_only=False)
    try:
        existing = accounts.health(address)
    except accounts.AccountNotFound:
        return Planned(address, adapter.name, True)
    if existing["provider"] != adapter.name:
        raise _wrong_provider(address, existing["provider"], adapter.name)
    return Planned(address, adapter.name, False)


def _wrong_provider(address: str, found: str, provider: str) -> ConsentError:
    return ConsentError("wrong_provider", f"{address} is a {found} account, not {provider}; "
                        "nothing was changed")


def begin(adapter: ConsentProvider, address: str, *, client_id: str, client_secret: str,
          tenant: str | None, redirect_uri: str) -> ConsentFlow:
    adapter.check_account(client_id=client_id, tenant=tenant, app_only=False)
    return adapter.consent_flow(client_id=client_id, client_secret=client_secret, tenant=tenant,
                                redirect_uri=redirect_uri, login_hint=address)


def complete(flow: ConsentFlow, response: Mapping[str, str], *, provider: str, address: str,
             client_id: str, client_secret: str, tenant: str | None,
             enqueue: Callable[[str, str], None] | None = None) -> Connected:
    """Check the redirect, redeem the code and store the grant; nothing is stored unless
    every check passes."""
    address = accounts.normalize_address(address)
    if not secrets.compare_digest(str(response.get("state", "")), flow.state):
        raise ConsentError("state_mismatch", "the answer did not carry the state this command "
                           "sent (a stale or forged redirect); nothing was changed")
    if "error" in response:
        error = response.get("error", "")
        words = ("the consent was declined" if error == "access_denied"
                 else f"the provider refused the request ({error})")
        raise ConsentError(error or "refused", f"{words}; nothing was changed")
    granted = flow.finish(response)
    if granted.signed_in.lower() != address:
        raise ConsentError("wrong_mailbox", f"the consent was given by {granted.signed_in}, not "
                           f"{address}; sign in as {address}; nothing was changed")
    return _store(provider, address, granted, client_id=client_id, client_secret=client_secret,
                  tenant=tenant, enqueue=enqueue)


def _store(provider: str, address: str, granted: Granted, *, client_id: str, client_secret: str,
           tenant: str | None, enqueue: Callable[[str, str], None] | None) -> Connected:
    try:
        existing = accounts.credentials(address)
    except accounts.AccountNotFound:
        existing = None
    if existing is None:
        accounts.add(provider, address, client_id=client_id, tenant=tenant,
                     client_secret=client_secret, refresh_token=granted.refresh_token)
        return Connected(address, provider, True, 0, granted.scopes)
    if existing.provider != provider:
        raise _wrong_provider(address, existing.provider, provider)
    account_id = accounts.reconnect(address, client_id=client_id, tenant=tenant,
                                    client_secret=client_secret,
                                    refresh_token=granted.refresh_token)
    parked = accounts.resume_parked(account_id)
    for message_id, message_provider in parked:
        if enqueue is not None:
            enqueue(message_id, message_provider)
    return Connected(address, provider, False, len(parked), granted.scopes)


def run(adapter: ConsentProvider, address: str, *, client_id: str, client_secret: str,
        tenant: str | None, timeout: float, show_url: Callable[[str], None],
        enqueue: Callable[[str, str], None] | None = None) -> Connected:
    """The whole consent: check (``plan``), listen, show the URL, wait, check, store."""
    plan(adapter, address, client_id=client_id, tenant=tenant)
    with LoopbackReceiver() as receiver:
        flow = begin(adapter, address, client_id=client_id, client_secret=client_secret,
                     tenant=tenant, redirect_uri=receiver.redirect_uri)
        show_url(flow.url)
        response = receiver.wait(timeout)
    return complete(flow, response, provider=adapter.name, address=address, client_id=client_id,
                    client_secret=client_secret, tenant=tenant, enqueue=enqueue)


def require_scopes(granted: tuple[str, ...], needed: tuple[str, ...], provider: str) -> None:
    """Refuse a grant missing a scope mailrelay needs (a person may untick one)."""
    held = {scope.lower() for scope in granted}
    missing = [scope for scope in needed if scope.lower() not in held]
    if missing:
        raise ConsentError("missing_scope", f"the {provider} grant lacks {', '.join(missing)}; "
                           "connect again and approve every permission; nothing was changed")


