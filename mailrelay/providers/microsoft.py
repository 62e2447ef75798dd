"""Microsoft 365 through Microsoft Graph, tokens through MSAL.

Endpoint   MAILRELAY_GRAPH_API_URL (https://graph.microsoft.com/v1.0):
           POST {mailbox}/sendMail                                   202, no body
           POST {mailbox}/messages                                   a draft (large messages)
           POST {mailbox}/messages/{id}/attachments/createUploadSession, PUT chunks, then
           POST {mailbox}/messages/{id}/send
           GET  {mailbox}/mailFolders/SentItems/messages?$filter=...  was it already sent?
           {mailbox} is /me for delegated accounts and /users/{address} for app-only ones.
Tokens     MSAL ConfidentialClientApplication, authority MAILRELAY_MS_AUTHORITY_HOST/{tenant}:
           delegated accounts refresh their grant (each refresh rotates the refresh token,
           stored before use by the token manager); app-only accounts use client credentials.
Scopes     delegated: Mail.Send and Mail.ReadWrite (drafts for large attachments, and the
           Sent Items lookup), offline_access at consent; app-only: the .default scope
           with the Mail.Send and Mail.ReadWrite application permissions.
Limits     4 MB per request: a request that would pass ~3.5 MB becomes a draft with upload
           sessions (chunks ≤ 4 MiB, multiples of 320 KiB, a failed chunk resumed from the
           session's nextExpectedRanges) and a send; 150 MB per message; 500 recipients;
           30 messages a minute and 4 concurrent requests per mailbox; only X- headers.
Identity   sendMail returns no id: each message carries mailrelay's Message-ID as its
           internetMessageId and in a single-value extended property, which the Sent Items
           lookup filters on (Microsoft's documented way to find a message one sent).
Errors     ErrorInvalidRecipients → invalid_recipient; ErrorSendAsDenied, ErrorAccessDenied,
           MailboxNotEnabledForRESTAPI → permission_denied; 413 → message_too_large;
           429 (TooManyRequests, ApplicationThrottled) → rate_limited with Retry-After;
           5xx → provider_unavailable; 401 → token renewed once, then auth_expired;
           MSAL invalid_grant → auth_revoked, invalid_client → invalid_credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msal
import requests

from mailrelay.auth.credentials import Credentials
from mailrelay.auth.tokens import TokenGrant
from mailrelay.config import get_settings
from mailrelay.errors import ProviderError
from mailrelay.message import Attachment, Mailbox
from mailrelay.providers.base import Capabilities, Outbound, SendResult, TokenSource
from mailrelay.providers.http import HttpAdapter, retry_after, summary

if TYPE_CHECKING:
    from mailrelay.auth.consent import ConsentFlow

GRAPH = "https://graph.microsoft.com"
DELEGATED_SCOPES = [f"{GRAPH}/Mail.Send", f"{GRAPH}/Mail.ReadWrite"]
APP_SCOPES = [f"{GRAPH}/.default"]
# mailrelay's named property: a GUID of its own and the property name.
ID_PROPERTY = "String {8e8c1f4a-6d2b-4f7e-9a51-3c0d7b2e5a10} Name MailrelayMessageId"

REQUEST_LIMIT = 4 * 1024 * 1024
SIMPLE_LIMIT = int(3.5 * 1024 * 1024)
UPLOAD_MIN = 3 * 1024 * 1024  # Graph refuses upload sessions for smaller files
CHUNK = 10 * 320 * 1024  # Graph wants multiples of 320 KiB, each chunk at most 4 MiB
CHUNK_RETRIES = 3

CODES = {
    "ErrorInvalidRecipients": "invalid_recipient",
    "ErrorSendAsDenied": "permission_denied",
    "ErrorAccessDenied": "permission_denied",
    "MailboxNotEnabledForRESTAPI": "permission_denied",
    "ErrorQuotaExceeded": "provider_rejected",
    "InvalidInternetMessageHeader": "invalid_header",
    "ErrorRequestEntityTooLarge": "message_too_large",
    "ErrorMessageSizeExceeded": "message_too_large",
}


@dataclass(frozen=True)
class Prepared:
    message: dict[str, Any]
    large: list[Attachment]  # attachments that go through upload sessions (3 MB or more)
    separate: list[Attachment]  # small ones added to the draft one request each
    size: int


def _mailbox(out: Outbound) -> str:
    """/me for a delegated account, /users/{address} for an app-only one."""
    from mailrelay.auth import credentials

    account = credentials.cached(out.account_address)
    return f"/users/{account.address}" if account.app_only else "/me"


def _split(parts: list[Attachment]) -> tuple[list[Attachment], list[Attachment]]:
    """(upload-session attachments, separately posted ones) when the message is too large
    for one request. Graph takes upload sessions only for files of 3 MB or more; smaller
    ones are posted to the draft one by one when together they are still too large."""
    def encoded(items: list[Attachment]) -> int:
        return sum(len(p.content) * 4 // 3 for p in items)

    room = SIMPLE_LIMIT - 64 * 1024  # the body and headers
    if encoded(parts) <= room:
        return [], []
    large = [p for p in parts if len(p.content) >= UPLOAD_MIN]
    small = [p for p in parts if len(p.content) < UPLOAD_MIN]
    return large, (small if encoded(small) > room else [])


class MicrosoftAdapter(HttpAdapter):
    name = "microsoft"
    supports_consent = True
    default_tenant = "common"
    capabilities = Capabilities(
        max_recipients=500,
        max_message_bytes=150 * 1024 * 1024,
        inline_images=True,
        large_message_path="draft + upload sessions (chunks ≤ 4 MiB) + send, up to 150 MB",
        sends_per_minute=30,
        can_verify=True,
        simple_request_bytes=SIMPLE_LIMIT,
        max_concurrent_per_mailbox=4,
        header_prefix="X-",
    )

    def __init__(self) -> None:
        super().__init__()
        settings = get_settings()
        self.base = settings.graph_api_url.rstrip("/")
        self.authority_host = settings.ms_authority_host.rstrip("/")
        self._apps: dict[tuple[str, str, str], msal.ConfidentialClientApplication] = {}
        # The Sent Items copy is what the "already sent?" lookup finds; without it a
        # message whose outcome is unknown is sent again.
        self.save_to_sent_items = settings.graph_save_to_sent_items

    # -- sending -------------------------------------------------------------------------
    def prepare(self, out: Outbound) -> Prepared:
        large, separate = _split([*out.message.attachments, *out.message.inline])
        body = graph_message(out, exclude=large + separate)
        return Prepared(body, large, separate, len(json.dumps(body)))

    def transmit_with(self, out: Outbound, prepared: Prepared, token: str) -> str | None:
        mailbox = _mailbox(out)
        if not prepared.large and not prepared.separate and prepared.size <= SIMPLE_LIMIT:
            self.call("POST", f"{self.base}{mailbox}/sendMail", token=token, sends=True,
                      json={"message": prepared.message, "saveToSentItems": self.save_to_sent_items})
            return None
        return self._send_large(mailbox, prepared, token)

    def _send_large(self, mailbox: str, prepared: Prepared, token: str) -> str:
        # Only the final send can deliver anything: a draft left by a failed attempt is
        # never sent, and the retry makes a new one.
        draft = self.call("POST", f"{self.base}{mailbox}/messages", token=token,
                          sends=False, json=prepared.message).json()
        draft_id = str(draft["id"])
        messages = f"{self.base}{mailbox}/messages/{draft_id}"
        for part in prepared.separate:
            self.call("POST", f"{messages}/attachments", token=token, sends=False,
                      json=_attachment(part))
        for part in prepared.large:
            session = self.call("POST", f"{messages}/attachments/createUploadSession", token=token,
                                sends=False, json={"AttachmentItem": {
                                    "attachmentType": "file", "name": part.filename,
                                    "size": len(part.content), "contentType": part.content_type,
                                    "isInline": part.cid is not None, "contentId": part.cid}}).json()
            self._upload(str(session["uploadUrl"]), part.content)
        self.call("POST", f"{messages}/send", token=token, sends=True)
        return draft_id

    def _upload(self, url: str, data: bytes) -> None:
        """PUT ``data`` in chunks; after a failed chunk, ask the session where to resume."""
        offset, failures = 0, 0
        while offset < len(data):
            end = min(offset + CHUNK, len(data))
            headers = {"Content-Range": f"bytes {offset}-{end - 1}/{len(data)}"}
            try:
                # The upload URL carries its own authorization; no bearer token goes there.
                response = self.request("PUT", url, sends=False, data=data[offset:end],
                                        headers=headers)
                if response.status_code >= 400:
                    raise self.error_for(response)
                offset = end
            except (requests.RequestException, ProviderError) as err:
                failures += 1
                if failures > CHUNK_RETRIES or (isinstance(err, ProviderError) and not err.retryable):
                    if isinstance(err, ProviderError):
                        raise
                    raise ProviderError("network_error", "upload chunk failed",
                                        provider=self.name) from err
                offset = self._resume_point(url, offset)

    def _resume_point(self, url: str, fallback: int) -> int:
        try:
            ranges = self.request("GET", url, sends=False).json().get("nextExpectedRanges")
            return int(str(ranges[0]).split("-")[0])
        except (requests.RequestException, ProviderError, ValueError, KeyError, IndexError, TypeError):
            return fallback

    def parse(self, out: Outbound, response: Any) -> SendResult:
        # sendMail returns no id; the message is found again by its Message-ID.
        return SendResult(provider_message_id=response or out.rfc822_message_id)

    def find_sent(self, out: Outbound, tokens: TokenSource | None = None) -> str | None:
        if not self.save_to_sent_items:
            return None  # nothing to find: the message is sent again, as with SMTP
        mailbox = _mailbox(out)
        value = out.rfc822_message_id.replace("'", "''")
        query = (f"singleValueExtendedProperties/Any(ep: ep/id eq '{ID_PROPERTY}' "
                 f"and ep/value eq '{value}')")

        def lookup(token: str) -> requests.Response:
            return self.call("GET", f"{self.base}{mailbox}/mailFolders/SentItems/messages",
                             token=token, sends=False,
                             params={"$filter": query, "$select": "id,internetMessageId", "$top": "1"})

        found = self.with_token(tokens, lookup).json().get("value") or []
        return str(found[0]["id"]) if found else None

    # -- accounts ------------------------------------------------------------------------
    def probe(self, account: Credentials, tokens: TokenSource | None) -> str | None:
        """Read the mailbox's Sent Items, as the "already sent?" lookup does: the scope, the
        mailbox (MailboxNotEnabledForRESTAPI) and, app-only, the access policy show here."""
        mailbox = f"/users/{account.address}" if account.app_only else "/me"

        def sent_items(token: str) -> requests.Response:
            return self.call("GET", f"{self.base}{mailbox}/mailFolders/SentItems/messages",
                             token=token, sends=False, params={"$top": "1", "$select": "id"})

        self.with_token(tokens, sent_items)
        return None  # the signed-in user was checked at consent (ID token)

    def consent_flow(self, *, client_id: str, client_secret: str, tenant: str | None,
                     redirect_uri: str, login_hint: str) -> ConsentFlow:
        from mailrelay.auth.microsoft_consent import MicrosoftConsent

        return MicrosoftConsent(client_id=client_id, client_secret=client_secret,
                                tenant=tenant or "common", redirect_uri=redirect_uri,
                                login_hint=login_hint, scopes=tuple(DELEGATED_SCOPES))

    # -- errors --------------------------------------------------------------------------
    def error_for(self, response: requests.Response) -> ProviderError:
        status = response.status_code
        try:
            error = response.json().get("error", {})
            code, message = str(error.get("code", "")), str(error.get("message", ""))
        except (ValueError, AttributeError):
            code, message = "", ""
        wait = retry_after(response)
        if status == 429 or code in ("TooManyRequests", "ApplicationThrottled"):
            mapped = "rate_limited"
        elif status == 413:
            mapped = "message_too_large"
        elif code in CODES:
            mapped = CODES[code]
        elif status >= 500:
            mapped = "provider_unavailable"
        elif status in (403, 404):
            mapped = "permission_denied"
        else:
            mapped = "provider_rejected"
        detail = f"{code}: {message}"[:200] if code else summary(response)
        return ProviderError(mapped, detail, provider=self.name, status=status, retry_after=wait,
                             reason=code or None)

    # -- tokens --------------------------------------------------------------------------
    def refresh(self, account: Credentials) -> TokenGrant:
        if not (account.client_id and account.client_secret and account.tenant):
            raise ProviderError("invalid_credentials", "the account lacks a client id, secret or "
                                "tenant", provider=self.name)
        try:
            # Building the app fetches the tenant's OpenID configuration: network too.
            app = self._app(account.client_id, account.client_secret, account.tenant)
            if account.app_only:
                result = app.acquire_token_for_client(scopes=APP_SCOPES)
            else:
                if not account.refresh_token:
                    raise ProviderError("auth_revoked", "no refresh token stored", provider=self.name)
                result = app.acquire_token_by_refresh_token(account.refresh_token,
                                                            scopes=DELEGATED_SCOPES)
        except requests.RequestException as err:
            raise ProviderError("network_error", "token endpoint unreachable",
                                provider=self.name) from err
        except ValueError as err:  # MSAL: the authority's configuration is unusable
            raise ProviderError("invalid_credentials", "the tenant's authority is unusable",
                                provider=self.name, reason="unknown_tenant") from err
        if "access_token" not in result:
            raise _token_error(result)
        return TokenGrant(access_token=str(result["access_token"]),
                          expires_at=time.time() + float(result.get("expires_in", 3600)),
                          refresh_token=result.get("refresh_token"))

    def _app(self, client_id: str, secret: str, tenant: str) -> msal.ConfidentialClientApplication:
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()
        key = (client_id, tenant, fingerprint)
        app = self._apps.get(key)
        if app is None:
            # Instance discovery asks Microsoft whether the authority is a known cloud; the
            # authority is our own setting, so it is trusted as given.
            app = self._apps[key] = msal.ConfidentialClientApplication(
                client_id, client_credential=secret, authority=f"{self.authority_host}/{tenant}",
                instance_discovery=False, timeout=get_settings().provider_timeout,
                token_cache=msal.TokenCache())
        return app


def _token_error(result: dict[str, Any]) -> ProviderError:
    error = str(result.get("error", ""))
    codes = result.get("error_codes") or []
    # AADSTS numbers say more than the OAuth error (90002: no such tenant; 700016: the
    # app is not in this tenant; 65001: not consented; 50173: grant revoked).
    reason = f"AADSTS{codes[0]}" if codes else error or None
    if error == "invalid_grant":
        return ProviderError("auth_revoked", f"token endpoint said invalid_grant {codes}"[:120],
                             provider="microsoft", status=400, reason=reason)
    if error in ("invalid_client", "unauthorized_client"):
        return ProviderError("invalid_credentials", f"token endpoint said {error} {codes}"[:120],
                             provider="microsoft", status=401, reason=reason)
    if error in ("temporarily_unavailable", "server_error"):
        return ProviderError("provider_unavailable", f"token endpoint said {error}",
                             provider="microsoft")
    return ProviderError("provider_rejected", f"token endpoint said {error or 'no'} {codes}"[:120],
                         provider="microsoft")


def _recipients(mailboxes: tuple[Mailbox, ...]) -> list[dict[str, Any]]:
    return [{"emailAddress": {"address": m.address, **({"name": m.name} if m.name else {})}}
            for m in mailboxes]


def _attachment(part: Attachment) -> dict[str, Any]:
    item: dict[str, Any] = {"@odata.type": "#microsoft.graph.fileAttachment", "name": part.filename,
                            "contentType": part.content_type,
                            "contentBytes": base64.b64encode(part.content).decode("ascii")}
    if part.cid is not None:
        item.update(isInline=True, contentId=part.cid)
    return item


def graph_message(out: Outbound, *, exclude: list[Attachment] | None = None) -> dict[str, Any]:
    """The Graph message resource for ``out``. Graph takes one body: HTML when there is
    one (the text alternative is then Graph's to derive), else the text."""
    message = out.message
    skip = {id(part) for part in exclude or []}
    body = ({"contentType": "HTML", "content": message.html} if message.html
            else {"contentType": "Text", "content": message.text or ""})
    resource: dict[str, Any] = {
        "subject": message.subject,
        "body": body,
        "toRecipients": _recipients(message.to),
        "ccRecipients": _recipients(message.cc),
        "bccRecipients": _recipients(message.bcc),
        "internetMessageId": out.rfc822_message_id,
        "singleValueExtendedProperties": [{"id": ID_PROPERTY, "value": out.rfc822_message_id}],
    }
    if message.reply_to:
        resource["replyTo"] = _recipients(message.reply_to)
    if message.headers:
        resource["internetMessageHeaders"] = [{"name": n, "value": v} for n, v in message.headers]
    attachments = [_attachment(p) for p in (*message.attachments, *message.inline) if id(p) not in skip]
    if attachments:
        resource["attachments"] = attachments
    return resource
