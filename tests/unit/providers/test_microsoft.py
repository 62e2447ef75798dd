"""Graph's message mapping and error table (no network: payloads as Graph documents them)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import requests

from mailrelay.message import validate
from mailrelay.providers.base import Outbound
from mailrelay.providers.microsoft import ID_PROPERTY, SIMPLE_LIMIT, MicrosoftAdapter, _split, graph_message


def outbound(**extra: object) -> Outbound:
    message = validate({"from": "me@contoso.example", "to": ["Ada <ada@example.org>"],
                        "cc": ["bob@example.org"], "bcc": ["hidden@example.org"],
                        "reply_to": "replies@contoso.example", "subject": "Hi", "text": "plain",
                        "html": "<p>rich</p>", "headers": {"X-Campaign": "q3"}, **extra})
    return Outbound(message=message, message_id="m", rfc822_message_id="<abc@contoso.example>",
                    date=dt.datetime.now(dt.UTC), attempt_number=1)


def test_message_resource_carries_everything_graph_takes() -> None:
    png = base64.b64encode(b"\x89PNG" + bytes(50)).decode()
    out = outbound(inline=[{"filename": "l.png", "content_type": "image/png", "content": png, "cid": "logo"}],
                   attachments=[{"filename": "a.txt", "content_type": "text/plain",
                                 "content": base64.b64encode(b"abc").decode()}])
    resource = graph_message(out)
    assert resource["body"] == {"contentType": "HTML", "content": "<p>rich</p>"}
    assert resource["toRecipients"] == [{"emailAddress": {"address": "ada@example.org", "name": "Ada"}}]
    assert resource["bccRecipients"] == [{"emailAddress": {"address": "hidden@example.org"}}]
    assert resource["replyTo"][0]["emailAddress"]["address"] == "replies@contoso.example"
    assert resource["internetMessageHeaders"] == [{"name": "X-Campaign", "value": "q3"}]
    assert resource["internetMessageId"] == "<abc@contoso.example>"
    assert resource["singleValueExtendedProperties"] == [
        {"id": ID_PROPERTY, "value": "<abc@contoso.example>"}]
    inline = next(a for a in resource["attachments"] if a.get("isInline"))
    assert inline["contentId"] == "logo" and inline["@odata.type"] == "#microsoft.graph.fileAttachment"
    plain = next(a for a in resource["attachments"] if not a.get("isInline"))
    assert base64.b64decode(plain["contentBytes"]) == b"abc"


def test_text_only_body() -> None:
    message = validate({"from": "me@contoso.example", "to": ["a@example.org"], "text": "just text"})
    out = Outbound(message=message, message_id="m", rfc822_message_id="<x@contoso.example>",
                   date=dt.datetime.now(dt.UTC), attempt_number=1)
    assert graph_message(out)["body"] == {"contentType": "Text", "content": "just text"}


def test_large_attachments_move_to_upload_sessions_until_the_rest_fits() -> None:
    def part(size: int) -> dict[str, str]:
        return {"filename": f"{size}.bin", "content_type": "application/octet-stream",
                "content": base64.b64encode(bytes(size)).decode()}

    out = outbound(attachments=[part(4_000_000), part(1_500_000), part(100_000)])
    large, separate = _split([*out.message.attachments])
    assert [len(p.content) for p in large] == [4_000_000] and separate == []
    assert len(json.dumps(graph_message(out, exclude=large))) < SIMPLE_LIMIT
    # Small files that together are too large are posted one by one, never by session.
    many = outbound(attachments=[part(1_900_000), part(1_900_000)])
    large, separate = _split([*many.message.attachments])
    assert large == [] and len(separate) == 2
    assert _split([*outbound(attachments=[part(1000)]).message.attachments]) == ([], [])


def response(status: int, code: str = "", message: str = "",
             retry_after: str | None = None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    if retry_after:
        resp.headers["Retry-After"] = retry_after
    resp._content = json.dumps({"error": {"code": code, "message": message}}).encode()
    return resp


@pytest.mark.parametrize(("status", "code", "expected", "retryable"), [
    (400, "ErrorInvalidRecipients", "invalid_recipient", False),
    (403, "ErrorSendAsDenied", "permission_denied", False),
    (403, "ErrorAccessDenied", "permission_denied", False),
    (404, "MailboxNotEnabledForRESTAPI", "permission_denied", False),
    (400, "InvalidInternetMessageHeader", "invalid_header", False),
    (413, "ErrorRequestEntityTooLarge", "message_too_large", False),
    (429, "ApplicationThrottled", "rate_limited", True),
    (429, "TooManyRequests", "rate_limited", True),
    (503, "ServiceUnavailable", "provider_unavailable", True),
    (500, "InternalServerError", "provider_unavailable", True),
    (400, "ErrorSomethingElse", "provider_rejected", False),
])
def test_error_table(status: int, code: str, expected: str, retryable: bool) -> None:
    err = MicrosoftAdapter().error_for(response(status, code, "msg", retry_after="3"))
    assert (err.code, err.retryable, err.status, err.retry_after) == (expected, retryable, status, 3)
    assert code in err.detail


def test_capabilities_are_graph_s_documented_limits() -> None:
    caps = MicrosoftAdapter.capabilities
    assert caps.max_concurrent_per_mailbox == 4 and caps.header_prefix == "X-"
    assert caps.simple_request_bytes is not None and caps.simple_request_bytes < 4 * 1024 * 1024
