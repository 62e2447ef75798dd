"""Gmail API provider.

Endpoint   MAILRELAY_GMAIL_API_URL (https://gmail.googleapis.com):
           POST /gmail/v1/users/me/messages/send            {"raw": base64url(RFC 822)}
           POST /upload/gmail/v1/users/me/messages/send?uploadType=media   message/rfc822
           GET  /gmail/v1/users/me/messages?q=rfc822msgid:<id>   (was it already sent?)
Tokens     MAILRELAY_GOOGLE_TOKEN_URL, refreshed through google-auth's Credentials.
Scopes     gmail.send to send; gmail.readonly for the rfc822msgid lookup (gmail.metadata
           does not allow `q`).
Limits     35 MB per message through the upload URI; the simple path takes requests up
           to 5 MB, so messages whose base64 would pass ~4.5 MB go through the upload URI;
           500 recipients per message; 250 quota units per user per second and 100 per
           send: 150 sends a minute per mailbox.
Errors     429 and 403 rateLimitExceeded/userRateLimitExceeded/dailyLimitExceeded/
           quotaExceeded → rate_limited (Retry-After honoured); 403 insufficientPermissions/
           forbidden → permission_denied; 400 with an invalid To/Cc/Bcc header →
           invalid_recipient, other 400 → provider_rejected; 413 → message_too_large;
           401 → token renewed once, then auth_expired; 5xx → provider_unavailable;
           token endpoint invalid_grant → auth_revoked, invalid_client → invalid_credentials.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import TYPE_CHECKING, Any

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
import requests

from mailrelay.auth.credentials import Credentials
from mailrelay.auth.tokens import TokenGrant
from mailrelay.config import get_settings
from mailrelay.errors import ProviderError
from mailrelay.message import build_mime
from mailrelay.providers.base import Capabilities, Outbound, SendResult, TokenSource
from mailrelay.providers.http import AuthRejected, HttpAdapter, retry_after, summary

if TYPE_CHECKING:
    from mailrelay.auth.consent import ConsentFlow

SCOPES = ("https://www.googleapis.com/auth/gmail.send",
          "https://www.googleapis.com/auth/gmail.readonly")

RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded",
                          "quotaExceeded", "concurrentLimitExceeded"})
PERMISSION_REASONS = frozenset({"insufficientPermissions", "forbidden", "domainPolicy",
                                "accessNotConfigured"})
RECIPIENT_HINTS = ("invalid to header", "invalid cc header", "invalid bcc header",
                   "recipient address required", "invalid recipient")


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's transport with our timeout instead of its 120 s default."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        super().__init__(session=session)
        self._timeout = timeout

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: Any = None, **kwargs: Any) -> Any:
        return super().__call__(url, method=method, body=body, headers=headers,
                                timeout=self._timeout, **kwargs)


class GmailAdapter(HttpAdapter):
    name = "gmail"
    supports_consent = True
    capabilities = Capabilities(
        max_recipients=500,
        max_message_bytes=35 * 1024 * 1024,
        inline_images=True,
        large_message_path="upload URI (uploadType=media), up to 35 MB",
        sends_per_minute=150,
        can_verify=True,
        # base64url of the raw message, plus the JSON around it, must stay under 5 MB.
        simple_request_bytes=(5 * 1024 * 1024 - 1024) * 3 // 4,
    )

    def __init__(self) -> None:
        super().__init__()
        settings = get_settings()
        self.base = settings.gmail_api_url.rstrip("/")
        self.token_url = settings.google_token_url
        self.token_session = requests.Session()

    # -- sending -------------------------------------------------------------------------
    def prepare(self, out: Outbound) -> bytes:
        # The Gmail API reads Bcc from the message and removes it before delivery.
        return build_mime(out.message, message_id=out.rfc822_message_id, date=out.date,
                          include_bcc=True)

    def transmit_with(self, out: Outbound, prepared: bytes, token: str) -> requests.Response:
        limit = self.capabilities.simple_request_bytes or 0
        if len(prepared) <= limit:
            raw = base64.urlsafe_b64encode(prepared).decode("ascii")
            return self.call("POST", f"{self.base}/gmail/v1/users/me/messages/send", token=token,
                             sends=True, json={"raw": raw})
        return self.call("POST", f"{self.base}/upload/gmail/v1/users/me/messages/send",
                         token=token, sends=True, params={"uploadType": "media"}, data=prepared,
                         headers={"Content-Type": "message/rfc822"})

    def parse(self, out: Outbound, response: requests.Response) -> SendResult:
        try:
            return SendResult(provider_message_id=str(response.json()["id"]))
        except (ValueError, KeyError, TypeError) as err:
            # Accepted (2xx) but unreadable: it was probably sent, so verify before resending.
            raise ProviderError("provider_unavailable", "unreadable success response",
                                provider=self.name, status=response.status_code,
                                sent_unknown=True) from err

    def find_sent(self, out: Outbound, tokens: TokenSource | None = None) -> str | None:
        query = "rfc822msgid:" + out.rfc822_message_id.strip("<>")

        def lookup(token: str) -> requests.Response:
            return self.call("GET", f"{self.base}/gmail/v1/users/me/messages", token=token,
                             sends=False, params={"q": query, "maxResults": 1,
                                                 # a sent copy moved to Trash still counts
                                                 "includeSpamTrash": "true"})

        found = self.with_token(tokens, lookup).json().get("messages") or []
        return str(found[0]["id"]) if found else None

    # -- accounts ------------------------------------------------------------------------
    def probe(self, account: Credentials, tokens: TokenSource | None) -> str | None:
        """The profile (who the grant belongs to), then the lookup that exactly-once needs."""
        def profile(token: str) -> requests.Response:
            return self.call("GET", f"{self.base}/gmail/v1/users/me/profile", token=token,
                             sends=False)

        def lookup(token: str) -> requests.Response:
            return self.call("GET", f"{self.base}/gmail/v1/users/me/messages", token=token,
                             sends=False, params={"q": "rfc822msgid:probe@mailrelay.invalid",
                                                  "maxResults": 1})

        address = str(self.with_token(tokens, profile).json().get("emailAddress", ""))
        self.with_token(tokens, lookup)
        return address or None

    def consent_flow(self, *, client_id: str, client_secret: str, tenant: str | None,
                     redirect_uri: str, login_hint: str) -> ConsentFlow:
        from mailrelay.auth.google_consent import GoogleConsent

        return GoogleConsent(client_id=client_id, client_secret=client_secret,
                             redirect_uri=redirect_uri, login_hint=login_hint, scopes=SCOPES)

    # -- errors --------------------------------------------------------------------------
    def error_for(self, response: requests.Response) -> ProviderError:
        status = response.status_code
        try:
            error = response.json().get("error", {})
            reasons = {str(e.get("reason")) for e in error.get("errors", []) if isinstance(e, dict)}
            message = str(error.get("message", ""))
        except (ValueError, AttributeError):
            reasons, message = set(), ""
        wait = retry_after(response)
        detail = (message or summary(response))[:200]

        def fail(code: str) -> ProviderError:
            return ProviderError(code, detail, provider=self.name, status=status, retry_after=wait,
                                 reason=min(reasons) if reasons else None)

        if status == 429 or (status == 403 and reasons & RATE_REASONS):
            return fail("rate_limited")
        if status == 413:
            return fail("message_too_large")
        if status == 403 or status == 404:
            return fail("permission_denied")
        if status == 400:
            lowered = message.lower()
            return fail("invalid_recipient" if any(h in lowered for h in RECIPIENT_HINTS)
                        else "provider_rejected")
        if status >= 500 or status == 408:
            return fail("provider_unavailable")
        return fail("provider_rejected")

    # -- tokens --------------------------------------------------------------------------
    def refresh(self, account: Credentials) -> TokenGrant:
        if not (account.client_id and account.client_secret and account.refresh_token):
            raise ProviderError("invalid_credentials", "the account lacks a client id, secret or "
                                "refresh token", provider=self.name)
        creds = google.oauth2.credentials.Credentials(
            token=None, refresh_token=account.refresh_token, client_id=account.client_id,
            client_secret=account.client_secret, token_uri=self.token_url)
        request = _TimedRequest(self.token_session, get_settings().provider_timeout)
        try:
            creds.refresh(request)
        except google.auth.exceptions.RefreshError as err:
            raise _refresh_error(err) from err
        except google.auth.exceptions.TransportError as err:
            raise ProviderError("network_error", "token endpoint unreachable",
                                provider=self.name) from err
        expiry = creds.expiry or (dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1))
        rotated = creds.refresh_token if creds.refresh_token != account.refresh_token else None
        return TokenGrant(access_token=str(creds.token),
                          expires_at=expiry.replace(tzinfo=dt.UTC).timestamp(),
                          refresh_token=rotated)


def _refresh_error(err: google.auth.exceptions.RefreshError) -> ProviderError:
    data = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], dict) else {}
    error = str(data.get("error", ""))
    if error == "invalid_grant":
        return ProviderError("auth_revoked", "the refresh token is revoked or expired",
                             provider="gmail", status=400, reason=error)
    if error in ("invalid_client", "unauthorized_client"):
        return ProviderError("invalid_credentials", f"token endpoint said {error}",
                             provider="gmail", status=401, reason=error)
    if getattr(err, "retryable", False):
        return ProviderError("provider_unavailable", "token endpoint failed", provider="gmail")
    return ProviderError("provider_rejected", f"token endpoint said {error or 'no'}",
                         provider="gmail")


__all__ = ["SCOPES", "AuthRejected", "GmailAdapter"]
