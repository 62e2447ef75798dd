"""The control API under /_emulator/: set up OAuth clients and grants (Google's, and
Microsoft's apps and grants under /_emulator/ms/), who signs in on the consent pages,
inject failures, read counters and the delivered messages. Tests and the demo drive the
emulator here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailrelay.emulator import mime, summary
from mailrelay.emulator.faults import RuleError, check_endpoint, parse_rule
from mailrelay.emulator.graph_mail import valid_address
from mailrelay.emulator.microsoft import DEFAULT_APP_ROLES
from mailrelay.emulator.server import Request, Response, Route, injectable_endpoints, json_response
from mailrelay.emulator.state import MsApp, State

_MESSAGE = r"/_emulator/api/messages/(?P<id>[0-9a-f]{1,32})"
# A delivered part is whatever a sender attached: never let a browser run it in our
# origin, where the control API lives.
PART_HEADERS = [("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", "default-src 'none'; sandbox")]
MAX_TOKEN_TTL = 30 * 24 * 3600
MAX_INDEX_LAG = 600


def _problem(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _object(request: Request) -> dict[str, Any] | Response:
    try:
        body = request.json()
    except ValueError:
        return _problem(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _problem(400, "the body must be a JSON object")
    return body


def _json_body(handler: Callable[[dict[str, Any]], Response]) -> Callable[[Request], Response]:
    """A control handler that takes a JSON object: anything else is refused before it runs."""
    def run(request: Request) -> Response:
        body = _object(request)
        return body if isinstance(body, Response) else handler(body)

    return run


def _string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None


def _strings(body: dict[str, Any], key: str) -> tuple[str, ...] | Response | None:
    """An optional list of non-empty strings."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return _problem(400, f"{key} must be a list of non-empty strings")
    return tuple(value)


def routes(state: State) -> list[Route]:
    def clients(body: dict[str, Any]) -> Response:
        client_id, secret = _string(body, "client_id"), _string(body, "client_secret")
        if client_id is None or secret is None:
            return _problem(400, "client_id and client_secret are required strings")
        state.register_client(client_id, secret)
        return json_response(200, {"client_id": client_id})

    def grants(body: dict[str, Any]) -> Response:
        client_id, email = _string(body, "client_id"), _string(body, "email")
        if client_id is None or email is None:
            return _problem(400, "client_id and email are required strings")
        try:
            token = state.grant(client_id, email, _string(body, "scope"))
        except KeyError:
            return _problem(404, f"no client {client_id}; register it at /_emulator/clients")
        return json_response(200, {"refresh_token": token})

    def ms_apps(body: dict[str, Any]) -> Response:
        client_id, secret = _string(body, "client_id"), _string(body, "client_secret")
        tenant = _string(body, "tenant")
        if client_id is None or secret is None or tenant is None:
            return _problem(400, "client_id, client_secret and tenant are required strings")
        roles, domains = _strings(body, "roles"), _strings(body, "domains")
        if isinstance(roles, Response):
            return roles
        if isinstance(domains, Response):
            return domains
        state.ms_register_app(MsApp(client_id, secret, tenant, DEFAULT_APP_ROLES if roles is None else roles,
                                    tuple(d.lower().lstrip("@") for d in domains or ())))
        return json_response(200, {"client_id": client_id, "tenant": tenant})

    def ms_grants(body: dict[str, Any]) -> Response:
        client_id, email = _string(body, "client_id"), _string(body, "email")
        if client_id is None or email is None:
            return _problem(400, "client_id and email are required strings")
        scope = _string(body, "scope")
        try:
            token = state.ms_grant(client_id, email, None if scope is None else tuple(scope.split()))
        except KeyError:
            return _problem(404, f"no Microsoft app {client_id}; register it at /_emulator/ms/apps")
        return json_response(200, {"refresh_token": token})

    def revoke(body: dict[str, Any]) -> Response:
        refresh_token, email = _string(body, "refresh_token"), _string(body, "email")
        if (refresh_token is None) == (email is None):
            return _problem(400, "give refresh_token or email, not both")
        return json_response(200, {"revoked": state.revoke(refresh_token=refresh_token, email=email)})

    def expire(body: dict[str, Any]) -> Response:
        return json_response(200, {"expired": state.expire_tokens(_string(body, "email"))})

    def settings(body: dict[str, Any]) -> Response:
        ttl = body.get("access_token_ttl")
        strict = body.get("ms_strict_rotation")
        lag = body.get("index_lag_seconds")
        if strict is not None and not isinstance(strict, bool):
            return _problem(400, "ms_strict_rotation must be true or false")
        if lag is not None:
            if not isinstance(lag, (int, float)) or isinstance(lag, bool) or not 0 <= lag <= MAX_INDEX_LAG:
                return _problem(400, f"index_lag_seconds must be a number from 0 to {MAX_INDEX_LAG}")
            state.set_index_lag(float(lag))
        if ttl is not None:
            if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TOKEN_TTL:
                return _problem(400, f"access_token_ttl must be an integer from 0 to {MAX_TOKEN_TTL}")
            state.set_access_token_ttl(ttl)
        if strict is not None:
            state.set_ms_strict_rotation(strict)
        return json_response(200, {"access_token_ttl": state.access_token_ttl,
                                   "ms_strict_rotation": state.ms_strict_rotation,
                                   "index_lag_seconds": state.index_lag})

    def consent(body: dict[str, Any]) -> Response:
        email = body.get("email")
        if email is not None and not valid_address(email if isinstance(email, str) else ""):
            return _problem(400, "email must be an email address, or null to clear it")
        state.set_consent_email(email)
        return json_response(200, {"email": state.consent_email})

    def inject(body: dict[str, Any]) -> Response:
        if set(body) == {"rule"}:  # {"rule": {...}} and the bare rule both work
            body = body["rule"]
        try:
            rule = parse_rule(body)
            check_endpoint(rule.endpoint, injectable_endpoints())
        except RuleError as err:
            return _problem(400, str(err))
        return json_response(200, {"id": state.faults.add(rule), "rule": rule.as_dict()})

    def faults(request: Request) -> Response:
        return json_response(200, {"rules": state.faults.snapshot()})

    def clear_faults(request: Request) -> Response:
        """Faults only: the messages and counters stay (an outage that ends)."""
        state.faults.clear()
        return json_response(200, {"rules": []})

    def reset(body: dict[str, Any]) -> Response:
        everything = body.get("all") is True
        state.reset(everything=everything)
        return json_response(200, {"reset": "all" if everything else "traffic"})

    def stats(request: Request) -> Response:
        return json_response(200, state.stats())

    def messages(request: Request) -> Response:
        found = state.received(request.arg("mailbox"))
        return json_response(200, {"messages": [summary.summarize(m) for m in found]})

    def message(request: Request) -> Response:
        stored = state.message(request.params["id"])
        if stored is None:
            return _problem(404, "no such message")
        return json_response(200, summary.summarize(stored))

    def raw(request: Request) -> Response:
        stored = state.message(request.params["id"])
        if stored is None:
            return _problem(404, "no such message")
        return Response(200, stored.raw, "message/rfc822", list(PART_HEADERS))

    def part(request: Request) -> Response:
        stored = state.message(request.params["id"])
        found = None if stored is None else mime.inline_part(stored, request.params["cid"])
        if found is None:
            return _problem(404, "no such message or part")
        content_type, data = found
        return Response(200, data, content_type, list(PART_HEADERS))

    return [
        Route("POST", r"/_emulator/clients", "emulator.clients", _json_body(clients)),
        Route("POST", r"/_emulator/grants", "emulator.grants", _json_body(grants)),
        Route("POST", r"/_emulator/ms/apps", "emulator.ms_apps", _json_body(ms_apps)),
        Route("POST", r"/_emulator/ms/grants", "emulator.ms_grants", _json_body(ms_grants)),
        Route("POST", r"/_emulator/revoke", "emulator.revoke", _json_body(revoke)),
        Route("POST", r"/_emulator/expire", "emulator.expire", _json_body(expire)),
        Route("POST", r"/_emulator/settings", "emulator.settings", _json_body(settings)),
        Route("POST", r"/_emulator/consent", "emulator.consent", _json_body(consent)),
        Route("POST", r"/_emulator/inject", "emulator.inject", _json_body(inject)),
        Route("GET", r"/_emulator/faults", "emulator.faults", faults),
        Route("DELETE", r"/_emulator/faults", "emulator.faults", clear_faults),
        Route("POST", r"/_emulator/reset", "emulator.reset", _json_body(reset)),
        Route("GET", r"/_emulator/stats", "emulator.stats", stats),
        Route("GET", r"/_emulator/api/messages", "emulator.messages", messages),
        Route("GET", _MESSAGE, "emulator.message", message),
        Route("GET", _MESSAGE + r"/raw", "emulator.raw", raw),
        Route("GET", _MESSAGE + r"/parts/(?P<cid>[^/]+)", "emulator.part", part),
    ]
