"""Microsoft's side: the Entra ID endpoints MSAL uses (sign-in and consent included) and
the Graph mail calls mailrelay makes.

Paths, parameters, status codes and error bodies follow Microsoft's documentation, so
MSAL and a Graph adapter written against the real services work here unchanged, with
``https://127.0.0.1:PORT/{tenant}`` as the authority and ``https://127.0.0.1:PORT/v1.0``
as Graph's base URL.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from mailrelay.emulator import consent, graph_mail, mime
from mailrelay.emulator.faults import FaultRule
from mailrelay.emulator.graph_mail import GraphError, GraphMessage, Recipient
from mailrelay.emulator.server import Handler, Request, Response, Route, json_response, oauth_client
from mailrelay.emulator.state import (
    Authorization,
    Chunk,
    CodeRefusal,
    Delivery,
    Draft,
    IssuedCode,
    MsAccessToken,
    MsApp,
    MsRefusal,
    State,
    UploadStatus,
    ms_object_id,
)

GRAPH = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# What a delegated grant made without a scope list consents to when ".default" is asked.
DEFAULT_DELEGATED_SCOPES = ("Mail.Send", "Mail.ReadWrite", "User.Read")
# The application permissions an app gets unless registered with its own list.
DEFAULT_APP_ROLES = ("Mail.Send", "Mail.ReadWrite", "User.Read.All")
_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
_SCOPE_WORDS = {
    "mail.send": "Send mail as you",
    "mail.readwrite": "Read, write and delete your mail",
    "mail.read": "Read your mail",
    "mail.readbasic": "Read your mail's headers and properties, but not the bodies",
    "user.read": "Sign you in and read your profile",
    ".default": "Everything the app is set up to use",
    "openid": "Sign you in",
    "profile": "See your basic profile",
    "email": "See your email address",
    "offline_access": "Keep access to what you allowed while you are away",
}
_PSEUDO_TENANTS = frozenset({"common", "organizations"})

# The permissions (delegated scopes or application roles, any one will do) each call needs.
_SEND = ("Mail.Send",)
_WRITE = ("Mail.ReadWrite",)
_READ = ("Mail.ReadBasic", "Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite")

_TENANT = r"/(?P<tenant>[^/_][^/]*)"
_AUTHORIZE = _TENANT + r"/oauth2/v2\.0/authorize"
_ME, _USERS = r"(?i)/v1\.0/me", r"(?i)/v1\.0/users/(?P<user>[^/]+)"
_MESSAGE = r"/messages/(?P<message>[^/]+)"
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*", re.IGNORECASE)
_WELL_KNOWN_FOLDERS = frozenset({"inbox", "archive", "deleteditems", "junkemail", "outbox"})
_WWW_AUTHENTICATE = (f'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
                     f'oauth2/authorize", client_id="{GRAPH_APP_ID}"')

# For injected failures: Graph's error code and message for each status; a rule's
# reason replaces the code (ErrorSendAsDenied, ErrorQuotaExceeded, ApplicationThrottled...).
_GRAPH_FAULTS: dict[int, tuple[str, str]] = {
    400: ("ErrorInvalidRecipients", "At least one recipient isn't valid."),
    401: ("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
    403: ("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
    404: ("MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is "
                                         "hosted on-premise."),
    409: ("ErrorIrresolvableConflict", "The send or update operation could not be performed "
                                       "because the change key passed in the request does not "
                                       "match the current change key for the item."),
    413: ("ErrorRequestEntityTooLarge", "The maximum request length supported is 4MB."),
    429: ("TooManyRequests", "Too many requests."),
    500: ("InternalServerError", "An internal server error occurred. The operation failed."),
    502: ("BadGateway", "Bad gateway."),
    503: ("ServiceUnavailable", "Service unavailable, please retry."),
    504: ("GatewayTimeout", "Gateway timeout."),
}
_REASON_MESSAGES = {
    "ErrorSendAsDenied": "The user account which was used to submit this request does not have "
                         "the right to send mail on behalf of the specified sending account., "
                         "Cannot submit message.",
    "ErrorQuotaExceeded": "The process failed to allocate the required storage: the mailbox "
                          "quota has been exceeded.",
    "ApplicationThrottled": "Application is over its MailboxConcurrency limit.",
    "MailboxNotEnabledForRESTAPI": _GRAPH_FAULTS[404][1],
    "ErrorAccessDenied": _GRAPH_FAULTS[403][1],
    "ErrorInvalidRecipients": _GRAPH_FAULTS[400][1],
}
# Entra's error codes (AADSTS...) and descriptions, for injected token failures.
_AAD_ERRORS: dict[str, tuple[int, str]] = {
    "invalid_request": (9002313, "Invalid request. Request is malformed or invalid."),
    "invalid_grant": (70000, "The provided value for the input parameter 'refresh_token' or "
                             "'assertion' is not valid."),
    "invalid_client": (7000215, "Invalid client secret provided."),
    "unauthorized_client": (700016, "Application was not found in the directory."),
    "invalid_scope": (70011, "The provided value for the input parameter 'scope' is not valid."),
    "interaction_required": (50076, "Due to a configuration change made by your administrator, "
                                    "or because you moved to a new location, you must use "
                                    "multi-factor authentication."),
    "access_denied": (50105, "The signed in user is not assigned to a role for the application."),
    "temporarily_unavailable": (90033, "A transient error has occurred. Please try again."),
    "server_error": (50000, "There was an error issuing a token or an issue with our sign-in "
                            "service."),
}
_AAD_FAULTS = {400: "invalid_request", 401: "invalid_client", 403: "access_denied",
               429: "temporarily_unavailable", 500: "server_error", 503: "temporarily_unavailable"}


# --- error shapes ------------------------------------------------------------------------


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _request_ids(request: Request | None) -> tuple[str, str]:
    request_id = str(uuid.uuid4())
    client_id = None if request is None else request.headers.get("client-request-id")
    return request_id, (client_id or request_id)


def _graph_headers(request: Request | None) -> list[tuple[str, str]]:
    request_id, client_request_id = _request_ids(request)
    return [("request-id", request_id), ("client-request-id", client_request_id)]


def graph_error(request: Request | None, status: int, code: str, message: str, *,
                headers: Iterable[tuple[str, str]] = (), extra: dict[str, Any] | None = None) -> Response:
    """Graph's error shape: {"error": {"code", "message", "innerError"}}."""
    request_id, client_request_id = _request_ids(request)
    body: dict[str, Any] = {"error": {"code": code, "message": message, "innerError": {
        "date": _now_text(), "request-id": request_id, "client-request-id": client_request_id}}}
    body.update(extra or {})
    all_headers = [("request-id", request_id), ("client-request-id", client_request_id), *headers]
    if status == 401:
        all_headers.append(("WWW-Authenticate", _WWW_AUTHENTICATE))
    return json_response(status, body, all_headers)


def _graph_failure(request: Request, err: GraphError) -> Response:
    return graph_error(request, err.status, err.code, err.message)


def graph_json(request: Request, status: int, data: Any,
               headers: Iterable[tuple[str, str]] = ()) -> Response:
    return json_response(status, data, [*_graph_headers(request), *headers])


def _graph_empty(request: Request, status: int, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(status, b"", "text/plain", [*_graph_headers(request), *headers])


def aad_error(request: Request | None, status: int, error: str, code: int, description: str,
              headers: Iterable[tuple[str, str]] = ()) -> Response:
    """Entra's OAuth error shape, AADSTS code, trace and correlation ids included."""
    trace_id = str(uuid.uuid4())
    correlation_id = (None if request is None else request.headers.get("client-request-id")) or str(
        uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return json_response(status, {
        "error": error,
        "error_description": f"AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: "
                             f"{correlation_id} Timestamp: {timestamp}",
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }, [("Pragma", "no-cache"), *headers])


def _tenant_not_found(tenant: str) -> str:
    return (f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud.")


def _app_not_found(client_id: str, tenant: str) -> str:
    return (f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
            "This can happen if the application has not been installed by the administrator of the "
            "tenant or consented to by any user in the tenant. You may have sent your authentication "
            "request to the wrong tenant.")


# --- small helpers -----------------------------------------------------------------------


def _base(request: Request) -> str:
    return "https://" + (request.headers.get("Host") or "127.0.0.1")




def display_name(email: str) -> str:
    local = email.partition("@")[0]
    return " ".join(part.capitalize() for part in re.split(r"[._\-+]+", local) if part) or email


def _resource_and_name(scope: str) -> tuple[str, str]:
    """("https://graph.microsoft.com", "Mail.Send") for any of Graph's spellings; a bare
    name is Graph's, as at Entra."""
    if "/" not in scope:
        return GRAPH, scope
    resource, _, name = scope.rpartition("/")
    resource = resource.rstrip("/")
    if resource.lower() in (GRAPH, GRAPH + "/", GRAPH_APP_ID, "https://graph.microsoft.com/v1.0"):
        resource = GRAPH
    return resource, name


def _describe(scope: str) -> str:
    """A scope in plain words; one the emulator has no words for stays itself."""
    name = scope if scope.lower() in _RESERVED_SCOPES else _resource_and_name(scope)[1]
    return _SCOPE_WORDS.get(name.lower(), scope)


def _split_scopes(scopes: Iterable[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The reserved scopes (openid, offline_access...) and the others by resource."""
    reserved: list[str] = []
    resources: dict[str, list[str]] = {}
    for scope in scopes:
        if scope.lower() in _RESERVED_SCOPES:
            reserved.append(scope)
        else:
            resource, name = _resource_and_name(scope)
            resources.setdefault(resource, []).append(name)
    return reserved, resources


def _tenant_matches(app: MsApp, tenant: str) -> bool:
    wanted = tenant.lower()
    return wanted in _PSEUDO_TENANTS or wanted in (app.tenant.lower(), ms_object_id(app.tenant))


def _ranges(status: UploadStatus) -> list[str]:
    return [] if status.done else [f"{status.next_offset}-"]


def _expiry(status: UploadStatus) -> str:
    return graph_mail.graph_time(datetime.fromtimestamp(status.expires_at, UTC))


class Microsoft:
    def __init__(self, state: State) -> None:
        self.state = state
        self.consent = consent.Consent(state, consent.Provider(
            "microsoft", "Microsoft", _describe, self._granted, self._denied))

    def routes(self) -> list[Route]:
        def entra(method: str, path: str, endpoint: str, handler: Handler) -> Route:
            return Route(method, path, endpoint, handler, identify=self._token_request_owner,
                         fault=self.fault)

        def graph(method: str, path: str, endpoint: str, handler: Handler) -> list[Route]:
            """The /me form and the /users/{id or userPrincipalName} form."""
            return [Route(method, base + path, endpoint, handler, identify=self._mailbox,
                          fault=self.fault, admit=self._admit) for base in (_ME, _USERS)]

        def upload(method: str, endpoint: str, handler: Handler) -> Route:
            return Route(method, r"/upload/graph/(?P<session>[A-Za-z0-9_-]+)", endpoint, handler,
                         identify=self._mailbox, fault=self.fault, admit=self._admit)

        return [
            entra("GET", _TENANT + r"/v2\.0/\.well-known/openid-configuration", "ms.discovery",
                  self.openid_configuration),
            entra("GET", r"/common/discovery/instance", "ms.discovery", self.instance_discovery),
            entra("GET", _TENANT + r"/discovery/v2\.0/keys", "ms.discovery", self.keys),
            Route("GET", _AUTHORIZE, "ms.authorize", self.authorize),
            Route("POST", _AUTHORIZE + r"/decision", "ms.consent", self.consent.decide),
            entra("POST", _TENANT + r"/oauth2/v2\.0/token", "ms.token", self.token),
            *graph("GET", "", "graph.me", self.me),
            *graph("POST", r"/sendMail", "graph.sendmail", self.send_mail),
            *graph("POST", r"/messages", "graph.create", self.create_draft),
            *graph("GET", r"/messages", "graph.list", self.list_messages),
            *graph("GET", _MESSAGE, "graph.get", self.get_message),
            *graph("POST", _MESSAGE + r"/attachments", "graph.attach", self.add_attachment),
            *graph("POST", _MESSAGE + r"/attachments/(?:microsoft\.graph\.)?createUploadSession",
                   "graph.upload_session", self.create_upload_session),
            *graph("POST", _MESSAGE + r"/(?:microsoft\.graph\.)?send", "graph.send_draft",
                   self.send_draft),
            *graph("GET", r"/mailFolders/(?P<folder>[^/]+)/messages", "graph.list",
                   self.list_messages),
            upload("PUT", "graph.upload_chunk", self.upload_chunk),
            upload("GET", "graph.upload_status", self.upload_status),
            upload("DELETE", "graph.upload_cancel", self.cancel_upload),
        ]

    # --- failure injection, admission ------------------------------------------------

    def fault(self, rule: FaultRule, endpoint: str) -> Response:
        status = rule.status or 500
        headers = [] if rule.retry_after is None else [("Retry-After", str(rule.retry_after))]
        if endpoint.startswith("ms."):
            error = rule.reason or _AAD_FAULTS.get(status, "server_error")
            aadsts, description = _AAD_ERRORS.get(error, (50000, f"Injected failure: {error}"))
            return aad_error(None, status, error, aadsts, description, headers)
        if status in (429, 503) and not headers:
            headers = [("Retry-After", "1")]  # Graph always says when to come back
        default_code, default_message = _GRAPH_FAULTS.get(status, ("UnknownError", "Injected failure."))
        code = rule.reason or default_code
        message = _REASON_MESSAGES.get(code, default_message)
        return graph_error(None, status, code, message, headers=headers)

    def _token_request_owner(self, request: Request) -> str | None:
        form = request.form() if request.method == "POST" else {}
        refresh_token, code = form.get("refresh_token"), form.get("code")
        if refresh_token is not None:
            return self.state.ms_refresh_owner(refresh_token)
        return None if code is None else self.state.code_owner(code)

    def _mailbox(self, request: Request) -> str | None:
        """The mailbox a Graph request acts on: the user in the path, the token's owner
        for /me, the session's for an upload URL."""
        session = request.params.get("session")
        if session is not None:
            return self.state.upload_owner(session)
        user = request.params.get("user")
        if user is not None:
            return self.state.ms_user(user) or user.lower()
        token = self._bearer(request)
        return None if token is None else token.email

    @contextmanager
    def _admit(self, request: Request) -> Iterator[Response | None]:
        """Graph's mailbox concurrency limit: four requests in flight per mailbox."""
        mailbox = self._mailbox(request)
        if mailbox is None:
            yield None
            return
        if not self.state.graph_enter(mailbox):
            yield graph_error(request, 429, "ApplicationThrottled",
                              _REASON_MESSAGES["ApplicationThrottled"], headers=[("Retry-After", "1")])
            return
        try:
            yield None
        finally:
            self.state.graph_leave(mailbox)

    # --- Entra ID --------------------------------------------------------------------

    def openid_configuration(self, request: Request) -> Response:
        tenant = request.params["tenant"]
        if not self.state.ms_tenant_known(tenant):
            return aad_error(request, 400, "invalid_tenant", 90002, _tenant_not_found(tenant))
        base = _base(request)
        issuer_tenant = "{tenantid}" if tenant.lower() in _PSEUDO_TENANTS else tenant
        oauth = f"{base}/{tenant}/oauth2/v2.0"
        return json_response(200, {
            "token_endpoint": f"{oauth}/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{base}/oidc/userinfo",
            "authorization_endpoint": f"{oauth}/authorize",
            "device_authorization_endpoint": f"{oauth}/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{oauth}/logout",
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                                 "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat",
                                 "auth_time", "acr", "nonce", "preferred_username", "name", "tid",
                                 "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": f"{base}/{tenant}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        })

    def instance_discovery(self, request: Request) -> Response:
        endpoint = request.arg("authorization_endpoint")
        if not endpoint:
            return aad_error(request, 400, "invalid_request", 900144, "The request must contain "
                             "the following parameter: 'authorization_endpoint'.")
        parts = urlsplit(endpoint)
        host = request.headers.get("Host") or ""
        # MSAL names the instance by host name alone, without the port.
        if parts.scheme != "https" or (parts.hostname or "") != (urlsplit(f"//{host}").hostname or ""):
            return aad_error(request, 400, "invalid_instance", 50049, "Unknown or invalid instance.")
        tenant = next((segment for segment in parts.path.split("/") if segment), "common")
        return json_response(200, {
            "tenant_discovery_endpoint": f"{_base(request)}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        })

    def authorize(self, request: Request) -> Response:
        tenant = request.params["tenant"]
        if not self.state.ms_tenant_known(tenant):
            return consent.error_page("Sign in", f"AADSTS90002: {_tenant_not_found(tenant)}")
        client_id = request.arg("client_id") or ""
        app = self.state.ms_app(client_id)
        if app is None or not _tenant_matches(app, tenant):
            return consent.error_page("Sign in", f"AADSTS700016: {_app_not_found(client_id, tenant)}")
        redirect_uri = request.arg("redirect_uri") or ""
        if not consent.is_loopback(redirect_uri):
            return consent.error_page("Sign in", f"AADSTS50011: The redirect URI '{redirect_uri}' "
                                      "specified in the request does not match the redirect URIs "
                                      f"configured for the application '{client_id}'. The emulator "
                                      "takes loopback addresses only: http://127.0.0.1:PORT/, "
                                      "http://[::1]:PORT/ or http://localhost:PORT/.")
        response_mode = request.arg("response_mode")
        if response_mode not in (None, "", "query"):
            # The answer could not reach the app the way it waits for it.
            return consent.error_page("Sign in", f"The emulator answers with response_mode=query "
                                      f"only, not {response_mode}.")
        state = request.arg("state")
        problem = self._authorize_problem(request)
        if problem is not None:
            error, code, description = problem
            return consent.redirect(redirect_uri, [("error", error),
                                                   ("error_description", f"AADSTS{code}: {description}"),
                                                   ("state", state)])
        authorization = Authorization(
            "microsoft", client_id, redirect_uri, tuple((request.arg("scope") or "").split()), state,
            request.arg("code_challenge") or "", login_hint=request.arg("login_hint") or None,
            nonce=request.arg("nonce") or None, client_info=request.arg("client_info") == "1")
        return self.consent.begin(request, authorization,
                                  f"/{quote(tenant, safe='')}/oauth2/v2.0/authorize/decision")

    @staticmethod
    def _authorize_problem(request: Request) -> tuple[str, int, str] | None:
        """(error, AADSTS code, description) for a request to turn down with a redirect."""
        response_type = request.arg("response_type")
        if response_type != "code":
            return ("unsupported_response_type", 700051,
                    f"response_type '{response_type or ''}' is not enabled for the application.")
        scopes = (request.arg("scope") or "").split()
        if not scopes:
            return ("invalid_request", 900144, "The request body must contain the following "
                    "parameter: 'scope'.")
        _, resources = _split_scopes(scopes)
        if set(resources) - {GRAPH}:
            return ("invalid_scope", 70011, "The provided value for the input parameter 'scope' is "
                    "not valid: the emulator knows Microsoft Graph's scopes only.")
        problem = consent.challenge_problem(request.arg("code_challenge"),
                                            request.arg("code_challenge_method"))
        if problem is consent.ChallengeProblem.MISSING:
            return ("invalid_request", 900144, "The request body must contain the following "
                    "parameter: 'code_challenge'.")
        if problem is consent.ChallengeProblem.METHOD:
            return "invalid_request", 50149, "Invalid Code_Challenge_method parameter."
        if problem is consent.ChallengeProblem.MALFORMED:
            return "invalid_request", 501491, "Invalid size of Code_Challenge parameter."
        return None

    def _granted(self, authorization: Authorization, code: str, email: str) -> list[tuple[str, str | None]]:
        params: list[tuple[str, str | None]] = [("code", code)]
        app = self.state.ms_app(authorization.client_id)
        if authorization.client_info and app is not None:
            params.append(("client_info", _client_info(self.state.ms_user_id(email),
                                                       ms_object_id(app.tenant))))
        return [*params, ("state", authorization.state), ("session_state", str(uuid.uuid4()))]

    @staticmethod
    def _denied(authorization: Authorization) -> list[tuple[str, str | None]]:
        return [("error", "access_denied"),
                ("error_description", "AADSTS65004: User declined to consent to access the app."),
                ("state", authorization.state)]

    def keys(self, request: Request) -> Response:
        # The emulator's id tokens are unsigned: there are no keys to publish.
        return json_response(200, {"keys": []})

    def token(self, request: Request) -> Response:
        tenant = request.params["tenant"]
        if not self.state.ms_tenant_known(tenant):
            return aad_error(request, 400, "invalid_request", 90002, _tenant_not_found(tenant))
        form = request.form()
        grant_type = form.get("grant_type")
        if not grant_type:
            return _missing(request, "grant_type")
        client_id, secret = oauth_client(request, form)
        if not client_id:
            return _missing(request, "client_id")
        app = self.state.ms_app(client_id)
        if app is None or not _tenant_matches(app, tenant):
            return aad_error(request, 400, "unauthorized_client", 700016,
                             _app_not_found(client_id, tenant))
        if grant_type not in ("refresh_token", "client_credentials", "authorization_code"):
            return aad_error(request, 400, "unsupported_grant_type", 70003, "The app requested an "
                             f"unsupported grant type '{grant_type}'.")
        if not secret:
            return aad_error(request, 401, "invalid_client", 7000218, "The request body must "
                             "contain the following parameter: 'client_assertion' or "
                             "'client_secret'.")
        if not secrets.compare_digest(app.secret.encode(), secret.encode()):
            return aad_error(request, 401, "invalid_client", 7000215, "Invalid client secret "
                             "provided. Ensure the secret being sent in the request is the client "
                             f"secret value, not the client secret ID, for a secret added to app "
                             f"'{client_id}'.")
        if grant_type == "client_credentials":
            return self._client_credentials_grant(request, app, form.get("scope", ""))
        if grant_type == "authorization_code":
            return self._code_grant(request, app, form)
        return self._refresh_grant(request, app, form)

    def _client_credentials_grant(self, request: Request, app: MsApp, scope: str) -> Response:
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return aad_error(request, 400, "invalid_scope", 1002012, f"The provided value for "
                             f"scope {scope} is not valid. Client credential flows must have a "
                             "scope value with /.default suffixed to the resource identifier "
                             "(application ID URI).")
        audience, _ = _resource_and_name(scopes[0])
        value, token = self.state.ms_app_token(app.client_id, audience)
        return json_response(200, {"token_type": "Bearer", "expires_in": token.expires_in(),
                                   "ext_expires_in": token.expires_in(), "access_token": value},
                             [("Pragma", "no-cache")])

    def _refresh_grant(self, request: Request, app: MsApp, form: dict[str, str]) -> Response:
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            return _missing(request, "refresh_token")
        asked = form.get("scope", "").split()
        reserved, resources = _split_scopes(asked)
        if len(resources) > 1:
            return aad_error(request, 400, "invalid_scope", 28000, "Provided value for the input "
                             "parameter scope is not valid because it contains more than one "
                             f"resource. Scope {' '.join(asked)} is not valid.")
        audience, names = next(iter(resources.items()), (GRAPH, []))
        default = any(name.lower() == ".default" for name in names)
        if default and len(names) > 1:
            return aad_error(request, 400, "invalid_scope", 70011, "The provided request must "
                             "include a 'scope' input parameter: .default cannot be combined with "
                             "other scopes of the resource.")
        result = self.state.ms_redeem(app.client_id, refresh_token, audience,
                                      None if default else tuple(names), DEFAULT_DELEGATED_SCOPES)
        if isinstance(result, MsRefusal):
            return self._refused(request, result, app.client_id)
        access, new_refresh, token = result
        return self._delegated_tokens(request, app, form, (access, new_refresh, token), reserved)

    def _delegated_tokens(self, request: Request, app: MsApp, form: dict[str, str],
                          minted: tuple[str, str | None, MsAccessToken], reserved: list[str],
                          nonce: str | None = None) -> Response:
        """Entra's answer with a user's tokens: for a refresh token and for a code alike."""
        access, refresh, token = minted
        assert token.email is not None  # a delegated token
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join([f"{token.audience}/{name}" for name in token.scopes] + reserved),
            "expires_in": token.expires_in(),
            "ext_expires_in": token.expires_in(),
            "access_token": access,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        tenant_id, user_id = ms_object_id(app.tenant), self.state.ms_user_id(token.email)
        if "openid" in (s.lower() for s in reserved):
            body["id_token"] = self._id_token(request, app, token.email, tenant_id, user_id, nonce)
        if form.get("client_info") == "1":
            body["client_info"] = _client_info(user_id, tenant_id)
        return json_response(200, body, [("Pragma", "no-cache")])

    def _code_grant(self, request: Request, app: MsApp, form: dict[str, str]) -> Response:
        code = form.get("code")
        if not code:
            return _missing(request, "code")
        issued = self.state.redeem_code(code, "microsoft")
        if isinstance(issued, CodeRefusal):
            return _code_refused(request, issued)
        refused = _code_mismatch(request, issued, app.client_id, form)
        if refused is not None:
            return refused
        authorization = issued.authorization
        reserved, resources = _split_scopes(authorization.scopes)
        names = tuple(resources.get(GRAPH, ()))
        if any(name.lower() == ".default" for name in names):
            names = DEFAULT_DELEGATED_SCOPES
        # The consent becomes a grant like ms_grant's, so refreshing works as for any other;
        # without offline_access the app just never sees its refresh token.
        first = self.state.ms_grant(app.client_id, issued.email, names)
        result = self.state.ms_redeem(app.client_id, first, GRAPH, None, DEFAULT_DELEGATED_SCOPES)
        assert not isinstance(result, MsRefusal)  # a grant made a moment ago
        access, refresh, token = result
        offline = "offline_access" in (s.lower() for s in reserved)
        return self._delegated_tokens(request, app, form, (access, refresh if offline else None, token),
                                      reserved, authorization.nonce)

    def _refused(self, request: Request, refusal: MsRefusal, client_id: str) -> Response:
        if refusal is MsRefusal.UNKNOWN_TOKEN:
            return aad_error(request, 400, "invalid_grant", 9002313, "Invalid request. Request is "
                             "malformed or invalid.")
        if refusal is MsRefusal.REVOKED:
            return aad_error(request, 400, "invalid_grant", 50173, "The provided grant has expired "
                             "due to it being revoked, a fresh auth token is needed. The user might "
                             "have changed or reset their password.")
        if refusal is MsRefusal.NOT_CONSENTED:
            return aad_error(request, 400, "invalid_grant", 65001, "The user or administrator has "
                             f"not consented to use the application with ID '{client_id}'. Send an "
                             "interactive authorization request for this user and resource.")
        reason = ("the refresh token was issued to a different client" if refusal is MsRefusal.OTHER_CLIENT
                  else "the refresh token has already been redeemed (strict rotation is on)")
        return aad_error(request, 400, "invalid_grant", 70000, "The provided value for the input "
                         f"parameter 'refresh_token' or 'assertion' is not valid: {reason}.")

    @staticmethod
    def _id_token(request: Request, app: MsApp, email: str, tenant_id: str, user_id: str,
                  nonce: str | None = None) -> str:
        """An OpenID Connect id token, unsigned ("alg": "none"): MSAL reads its claims
        without checking a signature, and the emulator publishes no keys. The nonce of the
        authorize request comes back in it: MSAL compares."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": app.client_id, "iss": f"{_base(request)}/{tenant_id}/v2.0", "iat": now,
            "nbf": now, "exp": now + 3600, "name": display_name(email), "oid": user_id,
            "preferred_username": email,
            "sub": consent.b64url(uuid.uuid5(uuid.UUID(user_id), app.client_id).bytes),
            "tid": tenant_id, "ver": "2.0"}
        if nonce is not None:
            claims["nonce"] = nonce
        return consent.unsigned_jwt(claims)

    # --- Graph: who is calling, for whom -----------------------------------------------

    def _bearer(self, request: Request) -> MsAccessToken | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        token = self.state.ms_authenticate(value.strip())
        return None if token is None or token.expired() else token

    def _caller(self, request: Request) -> MsAccessToken | Response:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return graph_error(request, 401, "InvalidAuthenticationToken", "Access token is empty.")
        token = self.state.ms_authenticate(value.strip())
        if token is None:
            return graph_error(request, 401, "InvalidAuthenticationToken",
                               "CompactToken parsing failed with error code: 80049217")
        if token.expired():
            return graph_error(request, 401, "InvalidAuthenticationToken",
                               "Lifetime validation failed, the token is expired.")
        if token.audience != GRAPH:
            return graph_error(request, 401, "InvalidAuthenticationToken",
                               "Access token validation failure. Invalid audience.")
        return token

    def _target(self, request: Request, token: MsAccessToken, *, sending: bool) -> str | Response:
        """The mailbox the request acts on, if this token may act on it."""
        user = request.params.get("user")
        if user is None:
            if token.email is None:
                return graph_error(request, 400, "BadRequest", "/me request is only valid with "
                                   "delegated authentication flow.")
            return token.email
        mailbox = self.state.ms_user(user)
        if mailbox is None or not graph_mail.valid_address(mailbox):
            return graph_error(request, 404, "ErrorInvalidUser", f"The requested user '{user}' is "
                               "invalid.")
        if token.email is None:  # app-only: any mailbox of the app's tenant
            app = self.state.ms_app(token.client_id)
            domain = mailbox.rpartition("@")[2]
            if app is not None and app.domains and domain not in app.domains:
                return graph_error(request, 404, "ErrorInvalidUser", f"The requested user '{user}' "
                                   "is invalid.")
            self.state.ms_user_id(mailbox)
            return mailbox
        if mailbox != token.email:
            if sending:
                return graph_error(request, 403, "ErrorSendAsDenied", _REASON_MESSAGES["ErrorSendAsDenied"])
            return graph_error(request, 403, "ErrorAccessDenied", _GRAPH_FAULTS[403][1])
        return mailbox

    def _authorize(self, request: Request, needed: tuple[str, ...], *,
                   sending: bool = False) -> tuple[MsAccessToken, str] | Response:
        token = self._caller(request)
        if isinstance(token, Response):
            return token
        mailbox = self._target(request, token, sending=sending)
        if isinstance(mailbox, Response):
            return mailbox
        held = {scope.lower() for scope in token.scopes}
        if needed and not any(permission.lower() in held for permission in needed):
            return graph_error(request, 403, "ErrorAccessDenied", _GRAPH_FAULTS[403][1])
        return token, mailbox

    @staticmethod
    def _too_large(request: Request) -> Response | None:
        if len(request.body) > graph_mail.REQUEST_LIMIT:
            return graph_error(request, 413, "ErrorRequestEntityTooLarge",
                               "The maximum request length supported is 4MB.")
        return None

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError) as err:
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload. Please ensure "
                             "Content-Type header is set and payload is of valid JSON format.") from err
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
        return {str(key).lower(): value for key, value in body.items()}

    # --- Graph: mail -------------------------------------------------------------------

    def me(self, request: Request) -> Response:
        authorized = self._authorize(request, ())
        if isinstance(authorized, Response):
            return authorized
        _, mailbox = authorized
        name = display_name(mailbox)
        given, _, surname = name.partition(" ")
        return graph_json(request, 200, {
            "@odata.context": f"{_base(request)}/v1.0/$metadata#users/$entity",
            "businessPhones": [], "displayName": name, "givenName": given, "surname": surname or None,
            "jobTitle": None, "mail": mailbox, "mobilePhone": None, "officeLocation": None,
            "preferredLanguage": None, "userPrincipalName": mailbox,
            "id": self.state.ms_user_id(mailbox),
        })

    def _accept_write(self, request: Request, scopes: tuple[str, ...], *,
                      sending: bool = False) -> str | Response:
        """The mailbox a size-checked, authorized write acts on, or the refusal."""
        refused = self._too_large(request)
        if refused is not None:
            return refused
        authorized = self._authorize(request, scopes, sending=sending)
        if isinstance(authorized, Response):
            return authorized
        return authorized[1]

    def send_mail(self, request: Request) -> Response:
        mailbox = self._accept_write(request, _SEND, sending=True)
        if isinstance(mailbox, Response):
            return mailbox
        try:
            body = self._body(request)
            unknown = set(body) - {"message", "savetosentitems"}
            if unknown:
                raise GraphError(400, "RequestBodyRead", f"The parameter '{sorted(unknown)[0]}' in "
                                 "the request payload is not a valid parameter for the operation "
                                 "'sendMail'.")
            if body.get("message") is None:
                raise GraphError(400, "ErrorInvalidParameter", "The value of the parameter "
                                 "'Message' is empty.")
            message = graph_mail.parse_message(body["message"])
            save = body.get("savetosentitems", True)
            if isinstance(save, str) and save.lower() in ("true", "false"):
                save = save.lower() == "true"
            if not isinstance(save, bool):
                raise GraphError(400, "RequestBodyRead", "Cannot convert the literal "
                                 f"'{save}' to the expected type 'Edm.Boolean'.")
            self._check_sender(mailbox, message)
            graph_mail.check_sendable(message)
        except GraphError as err:
            return _graph_failure(request, err)
        imid = message.internet_message_id or graph_mail.new_internet_message_id()
        self._deliver(mailbox, message, imid, save)
        return _graph_empty(request, 202)

    @staticmethod
    def _check_sender(mailbox: str, message: GraphMessage) -> None:
        if message.sender is not None and message.sender.address.lower() != mailbox:
            raise GraphError(403, "ErrorSendAsDenied", _REASON_MESSAGES["ErrorSendAsDenied"])

    def _deliver(self, mailbox: str, message: GraphMessage, imid: str, save: bool) -> None:
        sender = Recipient(mailbox, display_name(mailbox))
        now = datetime.now(UTC)
        raw = graph_mail.to_mime(message, message.sender or sender, imid, now)
        sent_view = graph_mail.message_json(
            graph_mail.new_id(), message, sender, is_draft=False, internet_message_id=imid,
            created=now, sent=now, folder="sentitems")
        received_view = {**sent_view, "bccRecipients": [], "singleValueExtendedProperties": [],
                         "parentFolderId": "inbox"}
        self.state.deliver(Delivery(
            sender=mailbox, raw_sent=raw,
            # Bcc recipients get the message, but nobody may see who they are.
            raw_received=mime.strip_header(raw, "Bcc"),
            recipients=message.recipients(),
            message_id=graph_mail.normalize_message_id(imid),
            provider="graph", keep_sent=save, sent_graph=sent_view, received_graph=received_view))

    def create_draft(self, request: Request) -> Response:
        mailbox = self._accept_write(request, _WRITE)
        if isinstance(mailbox, Response):
            return mailbox
        try:
            message = graph_mail.parse_message(request.json())
        except ValueError:
            return graph_error(request, 400, "BadRequest", "Unable to read JSON request payload. "
                               "Please ensure Content-Type header is set and payload is of valid "
                               "JSON format.")
        except GraphError as err:
            return _graph_failure(request, err)
        draft = Draft(graph_mail.new_id(), mailbox, message,
                      message.internet_message_id or graph_mail.new_internet_message_id())
        self.state.save_draft(draft)
        shown = graph_mail.project(self._draft_json(draft), None, None)
        return graph_json(request, 201, {
            "@odata.context": f"{_base(request)}/v1.0/$metadata#users('{quote(mailbox)}')/messages/$entity",
            **shown})

    def add_attachment(self, request: Request) -> Response:
        mailbox = self._accept_write(request, _WRITE)
        if isinstance(mailbox, Response):
            return mailbox
        try:
            attachment = graph_mail.parse_attachment(request.json())
        except ValueError:
            return graph_error(request, 400, "BadRequest", "Unable to read JSON request payload.")
        except GraphError as err:
            return _graph_failure(request, err)
        if not self.state.add_attachment(mailbox, request.params["message"], attachment):
            return _not_found(request)
        return graph_json(request, 201, {
            "@odata.context": f"{_base(request)}/v1.0/$metadata#users('{quote(mailbox)}')/messages"
                              f"('{request.params['message']}')/attachments/$entity",
            **attachment.as_json()})

    def create_upload_session(self, request: Request) -> Response:
        authorized = self._authorize(request, _WRITE)
        if isinstance(authorized, Response):
            return authorized
        _, mailbox = authorized
        try:
            item = graph_mail.parse_upload_item(request.json())
        except ValueError:
            return graph_error(request, 400, "BadRequest", "Unable to read JSON request payload.")
        except GraphError as err:
            return _graph_failure(request, err)
        session = self.state.open_upload(mailbox, request.params["message"], item.name,
                                         item.content_type, item.size, item.is_inline, item.content_id)
        if session is None:
            return _not_found(request)
        return graph_json(request, 201, {
            "@odata.context": f"{_base(request)}/v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": f"{_base(request)}/upload/graph/{session.id}?authtoken={session.authtoken}",
            "expirationDateTime": graph_mail.graph_time(datetime.fromtimestamp(session.expires_at, UTC)),
            "nextExpectedRanges": ["0-"],
        })

    def upload_chunk(self, request: Request) -> Response:
        session_id, authtoken = request.params["session"], request.arg("authtoken") or ""
        found = _CONTENT_RANGE.fullmatch(request.headers.get("Content-Range", ""))
        first, last, total = (int(g) for g in found.groups()) if found else (-1, -1, -1)
        outcome, status = self.state.upload_chunk(session_id, authtoken, first, last, total,
                                                  request.body, graph_mail.CHUNK_LIMIT)
        if outcome is Chunk.NO_SESSION or status is None:
            return graph_error(request, 404, "ErrorItemNotFound", "The upload session was not "
                               "found: it expired, was cancelled, or the URL is wrong.")
        if outcome is Chunk.TOO_LARGE:
            return graph_error(request, 413, "ErrorRequestEntityTooLarge", "A chunk may carry at "
                               f"most {graph_mail.CHUNK_LIMIT} bytes (4 MiB).")
        if outcome is Chunk.BAD_RANGE:
            return graph_error(request, 400, "ErrorInvalidRequest", "The Content-Range header "
                               "must be 'bytes first-last/total', agree with the body's length and "
                               f"the attachment's size ({status.size} bytes).")
        if outcome is Chunk.OUT_OF_ORDER:
            return graph_error(request, 416, "InvalidRange", "The uploaded fragment does not start "
                               f"at the next expected byte ({status.next_offset}).",
                               extra={"nextExpectedRanges": _ranges(status)})
        if outcome is Chunk.DRAFT_GONE:
            return _not_found(request)
        if outcome is Chunk.COMPLETED:
            return _graph_empty(request, 201, [("Location", f"{_base(request)}/v1.0/attachments/"
                                                f"{status.attachment_id}")])
        return graph_json(request, 200, {"expirationDateTime": _expiry(status),
                                         "nextExpectedRanges": _ranges(status)})

    def upload_status(self, request: Request) -> Response:
        status = self.state.upload_status(request.params["session"], request.arg("authtoken") or "")
        if status is None:
            return graph_error(request, 404, "ErrorItemNotFound", "The upload session was not "
                               "found: it expired, was cancelled, or the URL is wrong.")
        return graph_json(request, 200, {"expirationDateTime": _expiry(status),
                                         "nextExpectedRanges": _ranges(status)})

    def cancel_upload(self, request: Request) -> Response:
        if not self.state.cancel_upload(request.params["session"], request.arg("authtoken") or ""):
            return graph_error(request, 404, "ErrorItemNotFound", "The upload session was not found.")
        return _graph_empty(request, 204)

    def send_draft(self, request: Request) -> Response:
        authorized = self._authorize(request, _SEND, sending=True)
        if isinstance(authorized, Response):
            return authorized
        _, mailbox = authorized
        draft_id = request.params["message"]
        draft = self.state.draft(mailbox, draft_id)
        if draft is None:
            return _not_found(request)
        try:
            self._check_sender(mailbox, draft.message)
            graph_mail.check_sendable(draft.message)
        except GraphError as err:
            return _graph_failure(request, err)
        taken = self.state.take_draft(mailbox, draft_id)
        if taken is None:  # sent meanwhile by a concurrent request
            return _not_found(request)
        self._deliver(mailbox, taken.message, taken.internet_message_id, save=True)
        return _graph_empty(request, 202)

    def _items(self, mailbox: str, folder: str | None) -> list[dict[str, Any]] | None:
        drafts = [self._draft_json(d) for d in self.state.drafts(mailbox)]
        if folder is None:
            return self.state.graph_sent_items(mailbox) + drafts
        folder = folder.lower()
        if folder == "sentitems":
            return self.state.graph_sent_items(mailbox)
        if folder == "drafts":
            return drafts
        if folder in _WELL_KNOWN_FOLDERS:
            return []
        return None

    @staticmethod
    def _draft_json(draft: Draft) -> dict[str, Any]:
        sender = Recipient(draft.mailbox, display_name(draft.mailbox))
        return graph_mail.message_json(draft.id, draft.message, sender, is_draft=True,
                                       internet_message_id=draft.internet_message_id,
                                       created=draft.created_at, sent=None, folder="drafts")

    def list_messages(self, request: Request) -> Response:
        authorized = self._authorize(request, _READ)
        if isinstance(authorized, Response):
            return authorized
        _, mailbox = authorized
        folder = request.params.get("folder")
        items = self._items(mailbox, folder)
        if items is None:
            return graph_error(request, 400, "ErrorInvalidIdMalformed", "Id is malformed.")
        top_text = request.arg("$top") or "10"
        if not top_text.isdigit() or not 0 < int(top_text) <= 1000:
            return graph_error(request, 400, "BadRequest", f"Invalid $top value: {top_text}")
        try:
            predicate = graph_mail.parse_filter(request.arg("$filter"))
        except GraphError as err:
            return _graph_failure(request, err)
        found = [item for item in items if predicate(item)][:int(top_text)]
        where = f"/mailFolders('{folder}')" if folder else ""
        return graph_json(request, 200, {
            "@odata.context": f"{_base(request)}/v1.0/$metadata#users('{quote(mailbox)}'){where}/messages",
            "value": [graph_mail.project(item, request.arg("$select"), request.arg("$expand"))
                      for item in found],
        })

    def get_message(self, request: Request) -> Response:
        authorized = self._authorize(request, _READ)
        if isinstance(authorized, Response):
            return authorized
        _, mailbox = authorized
        for item in self._items(mailbox, None) or []:
            if item["id"] == request.params["message"]:
                return graph_json(request, 200, graph_mail.project(
                    item, request.arg("$select"), request.arg("$expand")))
        return _not_found(request)


def _client_info(user_id: str, tenant_id: str) -> str:
    """Entra's client_info: the user's and tenant's ids, which MSAL keys its cache by."""
    return consent.b64url(json.dumps({"uid": user_id, "utid": tenant_id}).encode())


def _code_refused(request: Request, refusal: CodeRefusal) -> Response:
    if refusal is CodeRefusal.REDEEMED:
        return aad_error(request, 400, "invalid_grant", 54005, "OAuth2 Authorization code was "
                         "already redeemed, please retry with a new valid code or use an existing "
                         "refresh token.")
    if refusal is CodeRefusal.EXPIRED:
        return aad_error(request, 400, "invalid_grant", 70008, "The provided authorization code or "
                         "refresh token has expired due to inactivity. Send a new interactive "
                         "authorization request for this user and resource.")
    return aad_error(request, 400, "invalid_grant", 9002313, "Invalid request. Request is malformed "
                     "or invalid.")


def _code_mismatch(request: Request, issued: IssuedCode, client_id: str,
                   form: dict[str, str]) -> Response | None:
    """Why a live code does not buy tokens for this request: another app, another
    redirect URI, or a verifier that does not fit the challenge (PKCE)."""
    authorization = issued.authorization
    if authorization.client_id != client_id:
        return aad_error(request, 400, "invalid_grant", 70000, "The provided value for the input "
                         "parameter 'code' is not valid: it was issued to another application.")
    redirect_uri = form.get("redirect_uri", "")
    if redirect_uri != authorization.redirect_uri:
        return aad_error(request, 400, "invalid_grant", 500112, f"The reply address '{redirect_uri}' "
                         "does not match the reply address "
                         f"'{authorization.redirect_uri}' provided when requesting Authorization code.")
    if not consent.verifier_matches(form.get("code_verifier", ""), authorization.code_challenge):
        return aad_error(request, 400, "invalid_grant", 501481, "The Code_Verifier does not match "
                         "the code_challenge supplied in the authorization request.")
    return None


def _missing(request: Request, parameter: str) -> Response:
    return aad_error(request, 400, "invalid_request", 900144, "The request body must contain the "
                     f"following parameter: '{parameter}'.")


def _not_found(request: Request) -> Response:
    return graph_error(request, 404, "ErrorItemNotFound", "The specified object was not found in "
                       "the store.")
