"""Gmail's error table, on responses shaped like Google's documented error bodies."""

from __future__ import annotations

import json

import pytest
import requests

from mailrelay.providers.gmail import GmailAdapter
from mailrelay.providers.http import retry_after


def response(status: int, reason: str | None = None, message: str = "", headers: dict[str, str] | None = None,
             body: bytes | None = None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.headers.update(headers or {})
    if body is None:
        errors = [{"message": message, "domain": "global", "reason": reason}] if reason else []
        body = json.dumps({"error": {"code": status, "message": message, "errors": errors,
                                     "status": "X"}}).encode()
    resp._content = body
    return resp


@pytest.mark.parametrize(("status", "reason", "message", "code", "retryable"), [
    (429, "rateLimitExceeded", "Too many requests", "rate_limited", True),
    (403, "userRateLimitExceeded", "User-rate limit exceeded", "rate_limited", True),
    (403, "dailyLimitExceeded", "Daily limit", "rate_limited", True),
    (403, "insufficientPermissions", "Insufficient Permission", "permission_denied", False),
    (400, "invalidArgument", "Invalid To header", "invalid_recipient", False),
    (400, "invalidArgument", "Missing draft message", "provider_rejected", False),
    (413, None, "Request Entity Too Large", "message_too_large", False),
    (500, "backendError", "Backend Error", "provider_unavailable", True),
    (503, "backendError", "The service is currently unavailable.", "provider_unavailable", True),
    (404, "notFound", "Requested entity was not found.", "permission_denied", False),
])
def test_error_table(status: int, reason: str | None, message: str, code: str, retryable: bool) -> None:
    err = GmailAdapter().error_for(response(status, reason, message))
    assert (err.code, err.retryable, err.status, err.provider) == (code, retryable, status, "gmail")


def test_retry_after_is_carried_in_seconds_or_as_a_date() -> None:
    err = GmailAdapter().error_for(response(429, "rateLimitExceeded", headers={"Retry-After": "7"}))
    assert err.retry_after == 7
    dated = response(503, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
    assert (retry_after(dated) or 0) > 10**8


def test_a_non_json_error_body_still_maps_by_status() -> None:
    err = GmailAdapter().error_for(response(502, body=b"<html>Bad Gateway</html>"))
    assert err.code == "provider_unavailable" and "Bad Gateway" in err.detail


def test_capabilities_route_large_messages_to_the_upload_path() -> None:
    caps = GmailAdapter.capabilities
    assert caps.simple_request_bytes is not None
    # base64 grows by 4/3: the largest simple request must still fit in Google's 5 MB.
    assert caps.simple_request_bytes * 4 / 3 < 5 * 1024 * 1024
    assert caps.max_message_bytes == 35 * 1024 * 1024 and caps.can_verify
