"""The sign-in and consent step of OAuth's authorization code flow, shared by Google and
Entra: the checks OAuth itself fixes (a loopback redirect for a native app, RFC 8252;
PKCE, RFC 7636), the page a person answers, and the redirect back to the app.

Each provider checks its own parameters and words its own answers (``Provider``); the
authorize request is kept server-side under a random id, so the page's form carries
nothing but that id, the account and the decision.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from html import escape
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from mailrelay.emulator.graph_mail import valid_address
from mailrelay.emulator.server import Request, Response
from mailrelay.emulator.state import Authorization, State

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# BASE64URL(SHA-256(verifier)) without padding is always 43 characters.
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636, section 4.1
_PAGE_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),  # a consent page in someone's frame is a clickjacking target
]
_ERROR_CSP = ("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 34rem; padding: 0 1rem;
       color: #1d1d1f; background: #f6f6f4; }
main { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 1.25rem 1.5rem; }
h1 { font-size: 1.3rem; margin-top: 0; }
label { display: block; font-weight: 600; margin: 1rem 0 .25rem; }
input[type=email] { width: 100%; box-sizing: border-box; padding: .4rem; font: inherit; }
ul { padding-left: 1.2rem; } li { margin: .3rem 0; }
code { font-size: .8rem; color: #555; overflow-wrap: anywhere; }
.buttons { display: flex; gap: .75rem; justify-content: flex-end; margin-top: 1.25rem; }
button { font: inherit; padding: .45rem 1.2rem; border-radius: 4px; border: 1px solid #888; }
#allow { background: #1a5fd0; color: #fff; border-color: #1a5fd0; }
.note { color: #666; font-size: .85rem; }
"""


# --- what OAuth fixes ----------------------------------------------------------------


def is_loopback(uri: str) -> bool:
    """A native app's redirect (RFC 8252, section 7.3): plain http to the loopback
    interface on any port, without credentials or a fragment."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises ValueError for a port that is no number)
    except ValueError:
        return False
    return (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
            and parts.username is None and "#" not in uri)


class ChallengeProblem(Enum):
    """What is wrong with an authorize request's PKCE parameters."""

    MISSING = "missing"
    METHOD = "method"  # not S256
    MALFORMED = "malformed"  # not 43 base64url characters


def challenge_problem(challenge: str | None, method: str | None) -> ChallengeProblem | None:
    """Only S256 is taken: a plain challenge is the verifier itself, readable by whoever
    sees the URL (and the apps the emulator stands in for must send S256)."""
    if not challenge:
        return ChallengeProblem.MISSING
    if method != "S256":
        return ChallengeProblem.METHOD
    if not _S256_CHALLENGE.fullmatch(challenge):
        return ChallengeProblem.MALFORMED
    return None


def verifier_matches(verifier: str, challenge: str) -> bool:
    """RFC 7636, section 4.6: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge."""
    if not _VERIFIER.fullmatch(verifier):
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return secrets.compare_digest(base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"),
                                  challenge)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """An id token with "alg": "none": clients read its claims without checking a
    signature (they got it straight from the token endpoint over TLS), and the emulator
    has no keys to publish."""
    header = {"typ": "JWT", "alg": "none"}
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."


def redirect(uri: str, params: Iterable[tuple[str, str | None]]) -> Response:
    """302 back to the app, the parameters added to the redirect URI's own query; a None
    value (a state the app never sent) is left out."""
    query = urlencode([(k, v) for k, v in params if v is not None], quote_via=quote)
    return Response(302, b"", "text/plain; charset=utf-8",
                    [("Location", f"{uri}{'&' if '?' in uri else '?'}{query}")])


# --- pages ---------------------------------------------------------------------------


def _page(status: int, title: str, content: str, csp: str) -> Response:
    document = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{escape(title)} · mailrelay emulator</title>
<style>{_STYLE}</style></head>
<body><main>
{content}
</main></body>
</html>
"""
    return Response(status, document.encode("utf-8"), "text/html; charset=utf-8",
                    [("Content-Security-Policy", csp), *_PAGE_HEADERS])


def error_page(title: str, detail: str, status: int = 400) -> Response:
    """What a person sees when the request cannot go back to the app: an unknown client
    or a redirect URI nobody may be sent to."""
    return _page(status, title, f'<h1 id="error">{escape(title)}</h1>\n'
                                f'<p id="detail">{escape(detail)}</p>', _ERROR_CSP)


def _form_action_csp(redirect_uri: str) -> str:
    """The page's policy. Browsers hold a form's redirects to form-action too, so the
    app's loopback origin is named besides our own."""
    parts = urlsplit(redirect_uri)
    # CSP's grammar has no IPv6 literal: for [::1] the scheme is the narrowest it can say.
    origin = "http:" if ":" in (parts.hostname or "") else f"http://{parts.netloc}"
    return ("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
            f"frame-ancestors 'none'; form-action 'self' {origin}")


def consent_page(provider: Provider, authorization: Authorization, request_id: str, action: str,
                 email: str) -> Response:
    scopes = "\n".join(f"<li><span>{escape(provider.describe(scope))}</span><br>"
                       f"<code>{escape(scope)}</code></li>" for scope in authorization.scopes)
    content = f"""<h1>Sign in with {escape(provider.title)}</h1>
<p>The app <code id="client-id">{escape(authorization.client_id)}</code> wants to use your account.</p>
<form method="post" action="{escape(action, quote=True)}">
<input type="hidden" name="request_id" value="{escape(request_id, quote=True)}">
<label for="email">Account</label>
<input type="email" name="email" id="email" value="{escape(email, quote=True)}" required
       autocomplete="username">
<p>It asks to:</p>
<ul id="scopes">
{scopes}
</ul>
<p class="note">You will be sent back to
<code id="redirect-uri">{escape(authorization.redirect_uri)}</code>.</p>
<div class="buttons">
<button type="submit" id="deny" name="decision" value="deny" formnovalidate>Deny</button>
<button type="submit" id="allow" name="decision" value="allow">Allow</button>
</div>
</form>"""
    return _page(200, f"Sign in with {provider.title}", content,
                 _form_action_csp(authorization.redirect_uri))


# --- the flow ------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """What differs between Google and Entra in the consent step."""

    name: str  # the provider key in State ("google", "microsoft")
    title: str  # shown on the page
    describe: Callable[[str], str]  # a scope in plain words
    # The redirect's parameters: for a consent (authorization, code, email), and a refusal.
    granted: Callable[[Authorization, str, str], list[tuple[str, str | None]]]
    denied: Callable[[Authorization], list[tuple[str, str | None]]]


class Consent:
    def __init__(self, state: State, provider: Provider) -> None:
        self.state = state
        self.provider = provider

    def begin(self, request: Request, authorization: Authorization, action: str) -> Response:
        """The sign-in page for a checked authorize request; with ``auto=1`` (the tests'
        switch) the consent, given at once as the login_hint or the control API's user."""
        email = authorization.login_hint or self.state.consent_email or ""
        if request.arg("auto") == "1":
            if not valid_address(email):
                return error_page("No account to sign in with", "auto=1 needs a login_hint or a "
                                  "user set at /_emulator/consent.")
            return self._approve(authorization, email)
        request_id = self.state.open_authorization(authorization)
        return consent_page(self.provider, authorization, request_id, action, email)

    def decide(self, request: Request) -> Response:
        """The page's answer: Allow sends a code back to the app, Deny an error."""
        form = request.form()
        request_id = form.get("request_id", "")
        decision = form.get("decision")
        email = form.get("email", "").strip()
        if self.state.pending_authorization(request_id, self.provider.name) is None:
            return error_page("This sign-in request is over", "It expired (after 10 minutes) or "
                              "was answered already. Start again from the app.")
        if decision not in ("allow", "deny"):
            return error_page("No decision", "Choose Allow or Deny.")
        if decision == "allow" and not valid_address(email):
            return error_page("No account to sign in with", "Go back and enter the email address "
                              "of the account to sign in with.")
        authorization = self.state.take_authorization(request_id, self.provider.name)
        if authorization is None:  # answered meanwhile, in another tab
            return error_page("This sign-in request is over", "It was answered already.")
        if decision == "deny":
            return redirect(authorization.redirect_uri, self.provider.denied(authorization))
        return self._approve(authorization, email)

    def _approve(self, authorization: Authorization, email: str) -> Response:
        code = self.state.issue_code(authorization, email)
        return redirect(authorization.redirect_uri, self.provider.granted(authorization, code, email))


