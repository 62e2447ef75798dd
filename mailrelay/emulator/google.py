"""Google's side: OAuth (sign-in and consent, the token endpoint) and the Gmail API
calls mailrelay makes.

Paths, parameters, status codes and error bodies follow Google's documentation, so
the Gmail adapter, written against the real API, works here unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from typing import Any

from mailrelay.emulator import consent, mime
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
from mailrelay.emulator.state import (
    AccessToken,
    Authorization,
    CodeRefusal,
    Delivery,
    IssuedCode,
    Refusal,
    State,
    normalize_message_id,
)

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
_AUTHORIZE = "/o/oauth2/v2/auth"
ISSUER = "https://accounts.google.com"

# Scopes. Google takes the short "email" and "profile" and grants them by their full names.
MAIL = "https://mail.google.com/"
_AUTH = "https://www.googleapis.com/auth/"
SEND, COMPOSE, MODIFY = _AUTH + "gmail.send", _AUTH + "gmail.compose", _AUTH + "gmail.modify"
READONLY, METADATA = _AUTH + "gmail.readonly", _AUTH + "gmail.metadata"
EMAIL, PROFILE = _AUTH + "userinfo.email", _AUTH + "userinfo.profile"
_SHORT_SCOPES = {"email": EMAIL, "profile": PROFILE}
# What each call takes, any one of them (Gmail API reference, "Authorization scopes").
_SEND_SCOPES = frozenset({SEND, COMPOSE, MODIFY, MAIL})
_SEARCH_SCOPES = frozenset({READONLY, MODIFY, MAIL})  # messages.list with q
_LIST_SCOPES = _SEARCH_SCOPES | {METADATA}
_PROFILE_SCOPES = frozenset({READONLY, METADATA, COMPOSE, MODIFY, MAIL})
_SCOPE_WORDS = {
    MAIL: "Read, write, send and permanently delete all your Gmail",
    SEND: "Send email as you",
    COMPOSE: "Create drafts and send email as you",
    MODIFY: "Read, write and send your Gmail (but not delete it for good)",
    READONLY: "Read your Gmail and its settings",
    METADATA: "See your Gmail's headers and labels, but not the messages themselves",
    "openid": "Know who you are on Google",
    EMAIL: "See your Google account's email address",
    PROFILE: "See your name and profile picture",
}

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


def _insufficient_scope(needed: frozenset[str]) -> Response:
    """Google's 403 for a token without the call's scope; the header names what would do."""
    challenge = (f'Bearer realm="https://accounts.google.com/", error="insufficient_scope", '
                 f'scope="{" ".join(sorted(needed))}"')
    return google_error(403, _REASON_MESSAGES["insufficientPermissions"], "insufficientPermissions",
                        "PERMISSION_DENIED", headers=[("WWW-Authenticate", challenge)])


def _granted_scopes(scope: str) -> tuple[str, ...]:
    """The requested scopes by the names Google grants them under, in order, once each."""
    return tuple(dict.fromkeys(_SHORT_SCOPES.get(s, s) for s in scope.split()))


def _subject(email: str) -> str:
    """A stable, Google-like (21 digits) account id for a mailbox."""
    digest = int.from_bytes(hashlib.sha256(email.lower().encode("utf-8")).digest()[:8], "big")
    return f"1{digest % 10**20:020d}"


class Google:
    def __init__(self, state: State) -> None:
        self.state = state
        self.consent = consent.Consent(state, consent.Provider(
            "google", "Google", lambda scope: _SCOPE_WORDS.get(scope, scope),
            self._granted, self._denied))

    def routes(self) -> list[Route]:
        def api(method: str, path: str, endpoint: str, handler: Handler) -> Route:
            return Route(method, path, endpoint, handler, identify=self._token_owner, fault=self.fault)

        return [
            Route("GET", _AUTHORIZE, "google.authorize", self.authorize),
            Route("POST", _AUTHORIZE + "/decision", "google.consent", self.consent.decide),
            Route("POST", r"/token", "google.token", self.token,
                  identify=self._token_request_owner, fault=self.fault),
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

    def _token_request_owner(self, request: Request) -> str | None:
        form = _form(request)
        refresh_token, code = form.get("refresh_token"), form.get("code")
        if refresh_token is not None:
            return self.state.refresh_token_owner(refresh_token)
        return None if code is None else self.state.code_owner(code)

    # --- OAuth: sign-in and consent ---------------------------------------------------

    def authorize(self, request: Request) -> Response:
        client_id = request.arg("client_id") or ""
        if not self.state.client_registered(client_id):
            return consent.error_page("Authorization error", "Error 401: invalid_client. The OAuth "
                                      f"client {client_id or '(none)'} was not found.")
        redirect_uri = request.arg("redirect_uri") or ""
        if not consent.is_loopback(redirect_uri):
            return consent.error_page("Authorization error", "Error 400: redirect_uri_mismatch. The "
                                      f"redirect_uri {redirect_uri or '(none)'} is no loopback address "
                                      "(http://127.0.0.1:PORT/, http://[::1]:PORT/ or "
                                      "http://localhost:PORT/), the only kind a desktop app may use.")
        state = request.arg("state")
        problem = self._authorize_problem(request)
        if problem is not None:
            error, description = problem
            return consent.redirect(redirect_uri, [("error", error), ("error_description", description),
                                                   ("state", state)])
        authorization = Authorization(
            "google", client_id, redirect_uri, _granted_scopes(request.arg("scope") or ""), state,
            request.arg("code_challenge") or "", login_hint=request.arg("login_hint") or None,
            nonce=request.arg("nonce") or None, offline=request.arg("access_type") == "offline")
        return self.consent.begin(request, authorization, _AUTHORIZE + "/decision")

    @staticmethod
    def _authorize_problem(request: Request) -> tuple[str, str] | None:
        """(error, description) for a request to turn down with a redirect to the app."""
        response_type = request.arg("response_type")
        if response_type != "code":
            return "unsupported_response_type", f"Invalid response_type: {response_type or '(none)'}"
        if not (request.arg("scope") or "").split():
            return "invalid_request", "Missing required parameter: scope"
        method = request.arg("code_challenge_method")
        problem = consent.challenge_problem(request.arg("code_challenge"), method)
        if problem is consent.ChallengeProblem.MISSING:
            return "invalid_request", "Missing required parameter: code_challenge"
        if problem is consent.ChallengeProblem.METHOD:
            return "invalid_request", (f"Invalid code_challenge_method: {method or '(none)'}; the "
                                       "emulator takes S256 only")
        if problem is consent.ChallengeProblem.MALFORMED:
            return "invalid_request", "Invalid code_challenge: S256 makes 43 base64url characters"
        return None

    @staticmethod
    def _granted(authorization: Authorization, code: str, email: str) -> list[tuple[str, str | None]]:
        return [("code", code), ("scope", " ".join(authorization.scopes)), ("state", authorization.state)]

    @staticmethod
    def _denied(authorization: Authorization) -> list[tuple[str, str | None]]:
        return [("error", "access_denied"), ("state", authorization.state)]

    # --- OAuth: the token endpoint ----------------------------------------------------

    def token(self, request: Request) -> Response:
        form = _form(request)
        grant_type = form.get("grant_type")
        if grant_type is None:
            return oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type not in ("refresh_token", "authorization_code"):
            return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        client_id, client_secret = oauth_client(request, form)
        if not client_id:
            return oauth_error(400, "invalid_request", "Missing required parameter: client_id")
        if grant_type == "authorization_code":
            return self._code_grant(client_id, client_secret or "", form)
        refresh_token = form.get("refresh_token")
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

    def _code_grant(self, client_id: str, client_secret: str, form: dict[str, str]) -> Response:
        if not self.state.client_authentic(client_id, client_secret):
            return oauth_error(401, "invalid_client", "The OAuth client was not found or its "
                               "secret does not match.")
        code = form.get("code")
        if not code:
            return oauth_error(400, "invalid_request", "Missing required parameter: code")
        issued = self.state.redeem_code(code, "google")
        if issued is CodeRefusal.EXPIRED:
            return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        if isinstance(issued, CodeRefusal):
            return oauth_error(400, "invalid_grant", "Malformed auth code.")
        refused = _code_refusal(issued, client_id, form)
        if refused is not None:
            return refused
        authorization = issued.authorization
        scope = " ".join(authorization.scopes)
        # The consent is a grant like any other: its refresh token works at this endpoint.
        refresh_token = self.state.grant(client_id, issued.email, scope)
        result = self.state.exchange(client_id, client_secret, refresh_token)
        assert not isinstance(result, Refusal)  # the client and the grant were just checked
        value, token = result
        body: dict[str, Any] = {"access_token": value, "expires_in": token.expires_in(),
                                "scope": scope, "token_type": "Bearer"}
        if authorization.offline:  # Google hands out refresh tokens for offline access only
            body["refresh_token"] = refresh_token
        if {"openid", EMAIL} & set(authorization.scopes):
            body["id_token"] = _id_token(issued)
        return json_response(200, body, [("Pragma", "no-cache")])

    # --- Gmail ------------------------------------------------------------------------

    def _bearer(self, request: Request) -> AccessToken | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return self.state.authenticate(value.strip())

    def _authorize(self, request: Request, scopes: frozenset[str]) -> AccessToken | Response:
        """The caller's token, if it is live, acts for the path's user and holds one of
        ``scopes``."""
        token = self._bearer(request)
        if token is None:
            return api_error(401, "Request had invalid authentication credentials. Expected OAuth "
                             "2 access token, login cookie or other valid authentication "
                             "credential.", "authError", "UNAUTHENTICATED")
        user = request.params["user"]
        if user != "me" and user.lower() != token.email:
            return api_error(403, f"Delegation denied for {token.email}", "forbidden",
                             "PERMISSION_DENIED")
        if not scopes & set(token.scope.split()):
            return _insufficient_scope(scopes)
        return token

    def send(self, request: Request) -> Response:
        token = self._authorize(request, _SEND_SCOPES)
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
        token = self._authorize(request, _SEND_SCOPES)
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
        token = self._authorize(request, _LIST_SCOPES)
        if isinstance(token, Response):
            return token
        if request.arg("q") and not _SEARCH_SCOPES & set(token.scope.split()):
            return api_error(403, "Metadata scope does not support 'q' parameter", "forbidden",
                             "PERMISSION_DENIED")
        message_id = _rfc822msgid(request.arg("q") or "")
        found = self.state.find_sent(token.email, message_id)
        if not found:
            return json_response(200, {"resultSizeEstimate": 0})
        return json_response(200, {
            "messages": [{"id": m.id, "threadId": m.thread_id} for m in found],
            "resultSizeEstimate": len(found),
        })

    def profile(self, request: Request) -> Response:
        token = self._authorize(request, _PROFILE_SCOPES)
        if isinstance(token, Response):
            return token
        return json_response(200, self.state.profile(token.email))


def _code_refusal(issued: IssuedCode, client_id: str, form: dict[str, str]) -> Response | None:
    """Why a live code does not buy tokens for this request: another client, another
    redirect URI, or a verifier that does not fit the challenge (PKCE)."""
    authorization = issued.authorization
    if authorization.client_id != client_id:
        return oauth_error(400, "invalid_grant", "Unauthorized: the code was issued to another client.")
    if form.get("redirect_uri") != authorization.redirect_uri:
        return oauth_error(400, "invalid_grant", "Bad Request: redirect_uri differs from the "
                           "authorization request's.")
    verifier = form.get("code_verifier")
    if not verifier:
        return oauth_error(400, "invalid_grant", "Missing code verifier.")
    if not consent.verifier_matches(verifier, authorization.code_challenge):
        return oauth_error(400, "invalid_grant", "Invalid code verifier.")
    return None


def _id_token(issued: IssuedCode) -> str:
    """The OpenID Connect id token, unsigned; the address is in it only when the email
    scope was granted, as at Google."""
    authorization, now = issued.authorization, int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "azp": authorization.client_id,
                              "aud": authorization.client_id, "sub": _subject(issued.email),
                              "iat": now, "exp": now + 3600}
    if EMAIL in authorization.scopes:
        claims.update(email=issued.email, email_verified=True)
    if authorization.nonce is not None:
        claims["nonce"] = authorization.nonce
    return consent.unsigned_jwt(claims)


def _form(request: Request) -> dict[str, str]:
    """The token request's parameters: form-encoded as OAuth says, or JSON, which
    Google also accepts."""
    content_type = request.headers.get("Content-Type", "")
    try:
        if "json" in content_type:
            data = json.loads(request.body.decode("utf-8") or "{}")
            return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
    except ValueError:
        return {}
    return request.form()


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
