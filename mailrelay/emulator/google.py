"""Google's side: the OAuth token endpoint and the Gmail API calls mailrelay makes.

Paths, parameters, status codes and error bodies follow Google's documentation, so
the Gmail adapter, written against the real API, works here unchanged.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import parse_qs

from mailrelay.emulator import mime
from mailrelay.emulator.faults import FaultRule
from mailrelay.emulator.server import (
    Handler,
    Request,
    Response,
    Route,
    google_error,
    json_response,
    oauth_client,
)
from mailrelay.emulator.state import AccessToken, Delivery, Refusal, State, normalize_message_id

METADATA_LIMIT = 5 * 1024 * 1024
UPLOAD_LIMIT = 35 * 1024 * 1024
_USER = r"/gmail/v1/users/(?P<user>[^/]+)"
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_WWW_AUTHENTICATE = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'

# For injected failures: the reason, message and status Google gives for each code.
_API_FAULTS: dict[int, tuple[str, str, str]] = {
    400: ("badRequest", "Bad Request", "INVALID_ARGUMENT"),
    401: ("authError", "Invalid Credentials", "UNAUTHENTICATED"),
    403: ("forbidden", "The caller does not have permission", "PERMISSION_DENIED"),
    404: ("notFound", "Requested entity was not found.", "NOT_FOUND"),
    409: ("conflict", "Conflict", "ABORTED"),
    413: ("badRequest", "Request payload size exceeds the limit.", "INVALID_ARGUMENT"),
    429: ("rateLimitExceeded", "Rate Limit Exceeded", "RESOURCE_EXHAUSTED"),
    500: ("backendError", "Backend Error", "INTERNAL"),
    502: ("backendError", "Bad Gateway", "UNAVAILABLE"),
    503: ("backendError", "The service is currently unavailable.", "UNAVAILABLE"),
    504: ("backendError", "Deadline Exceeded", "DEADLINE_EXCEEDED"),
}
_REASON_MESSAGES = {
    "rateLimitExceeded": "Rate Limit Exceeded",
    "userRateLimitExceeded": "User-rate limit exceeded",
    "dailyLimitExceeded": "Daily Limit Exceeded",
    "quotaExceeded": "Quota exceeded",
    "insufficientPermissions": "Request had insufficient authentication scopes.",
    "domainPolicy": "The domain administrators have disabled Gmail apps.",
    "failedPrecondition": "Precondition check failed.",
    "backendError": "Backend Error",
}
_USAGE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded",
                                  "dailyLimitExceeded", "quotaExceeded"})
_TOKEN_FAULTS = {400: "invalid_request", 401: "invalid_client", 403: "access_denied",
                 429: "rate_limit_exceeded", 500: "internal_failure", 503: "temporarily_unavailable"}


def api_error(status: int, message: str, reason: str, status_name: str, *,
              domain: str = "global") -> Response:
    headers = [("WWW-Authenticate", _WWW_AUTHENTICATE)] if status == 401 else []
    return google_error(status, message, reason, status_name, domain=domain, headers=headers)


def oauth_error(status: int, error: str, description: str) -> Response:
    return json_response(status, {"error": error, "error_description": description},
                         [("Pragma", "no-cache")])


def _invalid(message: str, reason: str = "invalidArgument") -> Response:
    return api_error(400, message, reason, "INVALID_ARGUMENT")


class Google:
    def __init__(self, state: State) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        def api(method: str, path: str, endpoint: str, handler: Handler) -> Route:
            return Route(method, path, endpoint, handler, identify=self._token_owner, fault=self.fault)

        return [
            Route("POST", r"/token", "google.token", self.token,
                  identify=self._refresh_token_owner, fault=self.fault),
            api("POST", _USER + r"/messages/send", "gmail.send", self.send),
            api("POST", "/upload" + _USER + r"/messages/send", "gmail.upload", self.upload),
            api("GET", _USER + r"/messages", "gmail.list", self.list_messages),
            api("GET", _USER + r"/profile", "gmail.profile", self.profile),
        ]

    # --- failure injection ------------------------------------------------------------

    def fault(self, rule: FaultRule, endpoint: str) -> Response:
        status = rule.status or 500
        headers = [] if rule.retry_after is None else [("Retry-After", str(rule.retry_after))]
        if endpoint == "google.token":
            error = rule.reason or _TOKEN_FAULTS.get(status, "server_error")
            response = oauth_error(status, error, f"Injected failure: {error}")
        else:
            default_reason, default_message, status_name = _API_FAULTS.get(
                status, ("backendError", "Backend Error", "UNKNOWN"))
            reason = rule.reason or default_reason
            message = _REASON_MESSAGES.get(reason, default_message) if rule.reason else default_message
            domain = "usageLimits" if reason in _USAGE_LIMIT_REASONS else "global"
            response = api_error(status, message, reason, status_name, domain=domain)
        response.headers += headers
        return response

    def _token_owner(self, request: Request) -> str | None:
        token = self._bearer(request)
        return None if token is None else token.email

    def _refresh_token_owner(self, request: Request) -> str | None:
        refresh_token = _form(request).get("refresh_token")
        return None if refresh_token is None else self.state.refresh_token_owner(refresh_token)

    # --- OAuth ------------------------------------------------------------------------

    def token(self, request: Request) -> Response:
        form = _form(request)
        grant_type = form.get("grant_type")
        if grant_type is None:
            return oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != "refresh_token":
            return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        client_id, client_secret = oauth_client(request, form)
        refresh_token = form.get("refresh_token")
        if not client_id:
            return oauth_error(400, "invalid_request", "Missing required parameter: client_id")
        if not refresh_token:
            return oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        result = self.state.exchange(client_id, client_secret or "", refresh_token)
        if result is Refusal.INVALID_CLIENT:
            return oauth_error(401, "invalid_client", "The OAuth client was not found or its "
                               "secret does not match.")
        if isinstance(result, Refusal):
            return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        value, token = result
        return json_response(200, {"access_token": value, "expires_in": token.expires_in(),
                                   "token_type": "Bearer", "scope": token.scope},
                             [("Pragma", "no-cache")])

    # --- Gmail ------------------------------------------------------------------------

    def _bearer(self, request: Request) -> AccessToken | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return self.state.authenticate(value.strip())

    def _authorize(self, request: Request) -> AccessToken | Response:
        token = self._bearer(request)
        if token is None:
            return api_error(401, "Request had invalid authentication credentials. Expected OAuth "
                             "2 access token, login cookie or other valid authentication "
                             "credential.", "authError", "UNAUTHENTICATED")
        user = request.params["user"]
        if user != "me" and user.lower() != token.email:
            return api_error(403, f"Delegation denied for {token.email}", "forbidden",
                             "PERMISSION_DENIED")
        return token

    def send(self, request: Request) -> Response:
        token = self._authorize(request)
        if isinstance(token, Response):
            return token
        if len(request.body) > METADATA_LIMIT:
            # Google's limit for a request without media: larger messages go through
            # the upload path.
            return api_error(413, f"Request payload size exceeds the limit: {METADATA_LIMIT} bytes.",
                             "badRequest", "INVALID_ARGUMENT")
        try:
            payload = request.json()
        except ValueError:
            return _invalid("Invalid JSON payload received.", "parseError")
        if not isinstance(payload, dict):
            return _invalid("Invalid JSON payload received. Expected an object.", "parseError")
        raw = payload.get("raw")
        if not isinstance(raw, str) or not raw:
            return _invalid("'raw' RFC822 payload message string or uploading message via "
                            "/upload/* URL required", "badRequest")
        message = _decode_base64(raw)
        if message is None:
            return _invalid("Invalid value for ByteString: raw")
        return self._deliver(token, message, payload.get("threadId"))

    def upload(self, request: Request) -> Response:
        token = self._authorize(request)
        if isinstance(token, Response):
            return token
        upload_type = request.arg("uploadType")
        content_type = request.headers.get("Content-Type", "")
        metadata: dict[str, Any] = {}
        if upload_type == "media":
            message = request.body
        elif upload_type == "multipart":
            parsed = _multipart_related(content_type, request.body)
            if isinstance(parsed, Response):
                return parsed
            metadata, message = parsed
        else:
            return _invalid(f"Invalid uploadType: {upload_type}; the emulator supports media "
                            "and multipart", "badRequest")
        if len(message) > UPLOAD_LIMIT:
            return api_error(413, f"Request payload size exceeds the limit: {UPLOAD_LIMIT} bytes.",
                             "uploadTooLarge", "INVALID_ARGUMENT")
        return self._deliver(token, message, metadata.get("threadId"))

    def _deliver(self, token: AccessToken, message: bytes, thread_id: object) -> Response:
        try:
            envelope = mime.envelope(message)
        except mime.InvalidAddress as err:
            return _invalid(str(err))
        if not envelope.recipients:
            return _invalid("Recipient address required")
        stored = self.state.deliver(Delivery(
            sender=token.email,
            raw_sent=message,
            # Bcc recipients get the message, but nobody may see who they are.
            raw_received=mime.strip_header(message, "Bcc"),
            recipients=envelope.recipients,
            message_id=normalize_message_id(envelope.message_id),
            thread_id=thread_id if isinstance(thread_id, str) else None,
        ))
        return json_response(200, {"id": stored.id, "threadId": stored.thread_id,
                                   "labelIds": ["SENT"]})

    def list_messages(self, request: Request) -> Response:
        token = self._authorize(request)
        if isinstance(token, Response):
            return token
        message_id = _rfc822msgid(request.arg("q") or "")
        found = self.state.find_sent(token.email, message_id)
        if not found:
            return json_response(200, {"resultSizeEstimate": 0})
        return json_response(200, {
            "messages": [{"id": m.id, "threadId": m.thread_id} for m in found],
            "resultSizeEstimate": len(found),
        })

    def profile(self, request: Request) -> Response:
        token = self._authorize(request)
        if isinstance(token, Response):
            return token
        return json_response(200, self.state.profile(token.email))


def _form(request: Request) -> dict[str, str]:
    """The token request's parameters: form-encoded as OAuth says, or JSON, which
    Google also accepts."""
    content_type = request.headers.get("Content-Type", "")
    try:
        if "json" in content_type:
            data = json.loads(request.body.decode("utf-8") or "{}")
            return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
        parsed = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
    except ValueError:
        return {}
    return {key: values[0] for key, values in parsed.items()}


def _decode_base64(text: str) -> bytes | None:
    """Gmail's ``raw`` is base64url; standard base64 and missing padding are accepted too."""
    text = text.strip()
    if not _BASE64.fullmatch(text):
        return None
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _rfc822msgid(query: str) -> str | None:
    for term in query.split():
        if term.lower().startswith("rfc822msgid:"):
            return term.split(":", 1)[1].strip('"')
    return None


def _multipart_related(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes] | Response:
    """The JSON metadata and the message of an uploadType=multipart request."""
    if not content_type.lower().startswith("multipart/related"):
        return _invalid("uploadType=multipart needs Content-Type multipart/related", "badContent")
    boundary = mime.boundary_of(content_type)
    if not boundary:
        return _invalid("multipart/related without a boundary", "badContent")
    parts = mime.split_multipart(body, boundary)
    if len(parts) != 2:
        return _invalid("multipart upload needs exactly two parts: metadata and media",
                        "badContent")
    (_, meta_body), (media_headers, media) = parts
    try:
        metadata = json.loads(meta_body.decode("utf-8") or "{}")
    except ValueError:
        return _invalid("Invalid JSON payload received.", "parseError")
    if not isinstance(metadata, dict):
        return _invalid("Invalid JSON payload received. Expected an object.", "parseError")
    if media_headers.get("Content-Transfer-Encoding", "").strip().lower() == "base64":
        try:
            media = base64.b64decode(media)
        except (binascii.Error, ValueError):
            return _invalid("Invalid base64 media", "badContent")
    return metadata, media
