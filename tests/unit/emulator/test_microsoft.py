"""The Microsoft side of the emulator: Entra ID through real MSAL calls, and Graph mail."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msal
import pytest
import requests

from mailrelay.emulator import Emulator, EmulatorClient

APP_ID = "11111111-2222-3333-4444-555555555555"
APP_SECRET = "ms-test-secret"
TENANT = "contoso.onmicrosoft.com"
ADA = "ada@contoso.com"
BOB = "bob@contoso.com"
MAIL_SCOPES = "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite"
MiB = 1024 * 1024
LOGO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
PDF = b"%PDF-1.4\n" + b"quarterly numbers " * 400


@pytest.fixture
def ms(emulator: Emulator) -> EmulatorClient:
    client = EmulatorClient(emulator.url, verify=emulator.bundle_path)
    client.ms_register_app(APP_ID, APP_SECRET, TENANT)
    return client


def token_request(emulator: Emulator, tenant: str = TENANT, **form: str) -> requests.Response:
    return requests.post(f"{emulator.url}/{tenant}/oauth2/v2.0/token", data=form,
                         verify=str(emulator.bundle_path), timeout=30)


def refresh(emulator: Emulator, refresh_token: str, scope: str = MAIL_SCOPES,
            **overrides: str) -> requests.Response:
    form = {"grant_type": "refresh_token", "client_id": APP_ID, "client_secret": APP_SECRET,
            "refresh_token": refresh_token, "scope": f"{scope} offline_access", **overrides}
    return token_request(emulator, **form)


class Graph:
    """Graph calls with one access token."""

    def __init__(self, emulator: Emulator, access_token: str) -> None:
        self.emulator = emulator
        self.access_token = access_token

    def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
             **kwargs: Any) -> requests.Response:
        url = path if path.startswith("https://") else f"{self.emulator.url}/v1.0{path}"
        auth = {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}
        return requests.request(method, url, headers={**auth, **(headers or {})},
                                verify=str(self.emulator.bundle_path), timeout=60, **kwargs)

    def send(self, message: dict[str, Any], user: str = "me", **extra: Any) -> requests.Response:
        prefix = "/me" if user == "me" else f"/users/{user}"
        return self.call("POST", f"{prefix}/sendMail", json={"message": message, **extra})


def delegated(emulator: Emulator, ms: EmulatorClient, email: str = ADA, scope: str = MAIL_SCOPES) -> Graph:
    response = refresh(emulator, ms.ms_grant(APP_ID, email), scope)
    assert response.status_code == 200, response.text
    return Graph(emulator, response.json()["access_token"])


def app_only(emulator: Emulator) -> Graph:
    response = token_request(emulator, grant_type="client_credentials", client_id=APP_ID,
                             client_secret=APP_SECRET, scope="https://graph.microsoft.com/.default")
    assert response.status_code == 200, response.text
    return Graph(emulator, response.json()["access_token"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def rich_message(**fields: Any) -> dict[str, Any]:
    return {
        "subject": "Quarterly report",
        "body": {"contentType": "HTML", "content": "<p>See attached.</p><img src=\"cid:logo@mailrelay\">"},
        "toRecipients": [{"emailAddress": {"address": "ada.lovelace@example.org", "name": "Ada Lovelace"}}],
        "ccRecipients": [{"emailAddress": {"address": "carol@example.org"}}],
        "bccRecipients": [{"emailAddress": {"address": "hidden@example.org"}}],
        "internetMessageHeaders": [{"name": "X-Mailrelay-Id", "value": "job-1"}],
        "attachments": [
            {"@odata.type": "#microsoft.graph.fileAttachment", "name": "logo.png",
             "contentType": "image/png", "contentBytes": b64(LOGO), "isInline": True,
             "contentId": "logo@mailrelay"},
            {"@odata.type": "#microsoft.graph.fileAttachment", "name": "q3.pdf",
             "contentType": "application/pdf", "contentBytes": b64(PDF)},
        ],
        **fields,
    }


def simple_message(**fields: Any) -> dict[str, Any]:
    return {"subject": "Hello", "body": {"contentType": "Text", "content": "Hello Ada"},
            "toRecipients": [{"emailAddress": {"address": "ada.lovelace@example.org"}}], **fields}


def graph_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    return error


# --- Entra ID through MSAL -------------------------------------------------------------


@pytest.mark.parametrize("options", ["no_instance_discovery", "no_validation", "discovery_url"])
def test_msal_refresh_and_client_credentials(emulator: Emulator, ms: EmulatorClient,
                                             monkeypatch: pytest.MonkeyPatch, options: str) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.bundle_path))
    choices: dict[str, dict[str, Any]] = {
        "no_instance_discovery": {"instance_discovery": False},
        "no_validation": {"validate_authority": False},
        "discovery_url": {"instance_discovery": f"{emulator.url}/common/discovery/instance"},
    }
    kwargs = choices[options]
    app = msal.ConfidentialClientApplication(APP_ID, client_credential=APP_SECRET,
                                             authority=f"{emulator.url}/{TENANT}", **kwargs)
    assert app.authority.token_endpoint == f"{emulator.url}/{TENANT}/oauth2/v2.0/token"
    first = ms.ms_grant(APP_ID, ADA)
    result = app.acquire_token_by_refresh_token(first, scopes=["https://graph.microsoft.com/Mail.Send"])
    assert "error" not in result, result
    assert result["token_type"] == "Bearer" and result["expires_in"] > 3000
    assert result["refresh_token"] != first  # Entra rotates refresh tokens
    assert result["id_token_claims"]["preferred_username"] == ADA
    assert "https://graph.microsoft.com/Mail.Send" in result["scope"].split()
    me = Graph(emulator, result["access_token"]).call("GET", "/me")
    assert me.status_code == 200 and me.json()["userPrincipalName"] == ADA

    client = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert "error" not in client, client
    assert "refresh_token" not in client
    sent = Graph(emulator, client["access_token"]).send(simple_message(), user=ADA)
    assert sent.status_code == 202, sent.text
    requests_seen = ms.stats()["requests"]
    assert requests_seen["ms.token"] == 2
    if options == "discovery_url":
        assert requests_seen["ms.discovery"] == 2  # instance, then tenant discovery
    else:
        assert requests_seen["ms.discovery"] == 1


def test_discovery_documents(emulator: Emulator, ms: EmulatorClient) -> None:
    config = requests.get(f"{emulator.url}/{TENANT}/v2.0/.well-known/openid-configuration",
                          verify=str(emulator.bundle_path), timeout=10).json()
    assert config["token_endpoint"] == f"{emulator.url}/{TENANT}/oauth2/v2.0/token"
    assert config["issuer"] == f"{emulator.url}/{TENANT}/v2.0"
    assert config["authorization_endpoint"].startswith(emulator.url)
    assert config["device_authorization_endpoint"] and config["jwks_uri"]
    instance = requests.get(
        f"{emulator.url}/common/discovery/instance", verify=str(emulator.bundle_path), timeout=10,
        params={"api-version": "1.1",
                "authorization_endpoint": f"{emulator.url}/{TENANT}/oauth2/v2.0/authorize"}).json()
    assert instance["tenant_discovery_endpoint"] == (
        f"{emulator.url}/{TENANT}/v2.0/.well-known/openid-configuration")
    assert instance["api-version"] == "1.1" and instance["metadata"][0]["aliases"]
    unknown = requests.get(f"{emulator.url}/fabrikam/v2.0/.well-known/openid-configuration",
                           verify=str(emulator.bundle_path), timeout=10)
    assert unknown.status_code == 400 and unknown.json()["error_codes"] == [90002]


def test_strict_rotation(emulator: Emulator, ms: EmulatorClient) -> None:
    original = ms.ms_grant(APP_ID, ADA)
    # Off (the default): a used refresh token keeps working, though a new one comes back.
    relaxed = refresh(emulator, original)
    assert relaxed.status_code == 200 and relaxed.json()["refresh_token"] != original
    assert refresh(emulator, original).status_code == 200

    ms.set_ms_strict_rotation(True)
    current = ms.ms_grant(APP_ID, ADA)
    used = []
    for _ in range(3):
        response = refresh(emulator, current)
        assert response.status_code == 200, response.text
        used.append(current)
        current = response.json()["refresh_token"]
    for old in used:
        response = refresh(emulator, old)
        assert response.status_code == 400
        body = response.json()
        assert body["error"] == "invalid_grant" and body["error_codes"] in ([70000], [9002313])
        assert body["error_description"].startswith("AADSTS") and body["trace_id"] and body["correlation_id"]
    assert refresh(emulator, current).status_code == 200


def test_token_errors(emulator: Emulator, ms: EmulatorClient) -> None:
    grant = ms.ms_grant(APP_ID, ADA)
    wrong = refresh(emulator, grant, client_secret="nope")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client" and wrong.json()["error_codes"] == [7000215]
    tenant = token_request(emulator, "fabrikam.onmicrosoft.com", grant_type="refresh_token",
                           client_id=APP_ID, client_secret=APP_SECRET, refresh_token=grant)
    assert tenant.status_code == 400
    assert tenant.json()["error"] == "invalid_request" and tenant.json()["error_codes"] == [90002]
    assert refresh(emulator, "0.AXoA-unknown").json()["error"] == "invalid_grant"
    scope = token_request(emulator, grant_type="client_credentials", client_id=APP_ID,
                          client_secret=APP_SECRET, scope="https://graph.microsoft.com/Mail.Send")
    assert scope.status_code == 400 and scope.json()["error"] == "invalid_scope"

    graph = Graph(emulator, refresh(emulator, grant).json()["access_token"])
    assert ms.revoke(email=ADA) == 1
    revoked = refresh(emulator, grant)
    assert revoked.status_code == 400 and revoked.json()["error"] == "invalid_grant"
    # Entra's access tokens outlive a revocation, until they expire.
    assert graph.call("GET", "/me").status_code == 200
    assert ms.expire_tokens(ADA) == 1
    expired = graph_error(graph.call("GET", "/me"), 401, "InvalidAuthenticationToken")
    assert "expired" in expired["message"]


# --- Graph: sendMail ---------------------------------------------------------------------


def test_send_mail_with_inline_image_and_attachment(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    response = graph.send(rich_message())
    assert response.status_code == 202 and response.content == b""
    [got] = ms.messages("ada.lovelace@example.org")
    assert got["provider"] == "graph" and got["mailbox"] == "ada.lovelace@example.org"
    assert got["subject"] == "Quarterly report" and got["to"] == ["Ada Lovelace <ada.lovelace@example.org>"]
    assert got["from"] == f"Ada <{ADA}>" and got["cc"] == ["carol@example.org"]
    assert got["structure"] == "multipart/mixed > multipart/related"
    assert "cid:logo@mailrelay" in got["html"]
    assert got["inline"] == [{"cid": "logo@mailrelay", "filename": "logo.png", "content_type": "image/png",
                              "size": len(LOGO), "sha256": hashlib.sha256(LOGO).hexdigest(),
                              "is_inline": True}]
    assert got["attachments"] == [{"filename": "q3.pdf", "content_type": "application/pdf",
                                   "size": len(PDF), "sha256": hashlib.sha256(PDF).hexdigest(),
                                   "is_inline": False}]
    logo, pdf = got["graph"]["attachments"]
    assert logo["isInline"] is True and logo["contentId"] == "logo@mailrelay"
    assert logo["sha256"] == hashlib.sha256(LOGO).hexdigest()
    assert pdf["isInline"] is False and pdf["sha256"] == hashlib.sha256(PDF).hexdigest()
    assert got["graph"]["internetMessageHeaders"] == [{"name": "X-Mailrelay-Id", "value": "job-1"}]
    assert got["message_id"].endswith("@emulator>")
    assert ms.part(got["id"], "logo@mailrelay") == LOGO
    raw = ms.raw(got["id"])
    assert b"X-Mailrelay-Id: job-1" in raw
    # Bcc recipients get it; nobody sees them.
    assert len(ms.messages("hidden@example.org")) == 1
    for copy in ms.messages():
        assert b"hidden@example.org" not in ms.raw(copy["id"])
    page = requests.get(f"{emulator.url}/inbox/ada.lovelace@example.org", verify=str(emulator.bundle_path),
                        timeout=10)
    assert "via Microsoft Graph" in page.text


def test_app_only_sends_as_any_user_of_the_tenant(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = app_only(emulator)
    assert graph.send(simple_message(), user=BOB).status_code == 202
    [got] = ms.messages("ada.lovelace@example.org")
    assert got["from"] == f"Bob <{BOB}>"
    me = graph.call("GET", "/me")
    graph_error(me, 400, "BadRequest")  # /me means nothing without a user
    user = graph.call("GET", f"/users/{BOB}").json()
    assert user["userPrincipalName"] == BOB and user["mail"] == BOB
    # By object id too.
    assert graph.send(simple_message(), user=user["id"]).status_code == 202
    graph_error(graph.send(simple_message(), user="00000000-0000-0000-0000-00000000dead"), 404,
                "ErrorInvalidUser")


def test_delegated_token_cannot_send_as_another_user(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    graph_error(graph.send(simple_message(), user=BOB), 403, "ErrorSendAsDenied")
    graph_error(graph.send(simple_message(**{"from": {"emailAddress": {"address": BOB}}})), 403,
                "ErrorSendAsDenied")
    assert graph.send(simple_message(), user=ADA).status_code == 202
    assert len(ms.messages()) == 1


def test_request_size_limit(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    big = simple_message(attachments=[{"@odata.type": "#microsoft.graph.fileAttachment",
                                       "name": "big.bin", "contentBytes": b64(b"\0" * (3 * MiB + 1))}])
    graph_error(graph.send(big), 413, "ErrorRequestEntityTooLarge")
    assert ms.messages() == []


def test_refused_messages(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    header = simple_message(internetMessageHeaders=[{"name": "Reply-By", "value": "x"}])
    graph_error(graph.send(header), 400, "InvalidInternetMessageHeader")
    invalid = simple_message(toRecipients=[{"emailAddress": {"address": "nobody@example.invalid"}}])
    graph_error(graph.send(invalid), 400, "ErrorInvalidRecipients")
    graph_error(graph.send(simple_message(toRecipients=[])), 400, "ErrorInvalidRecipients")
    graph_error(graph.send(simple_message(toRecipient=[])), 400, "RequestBodyRead")
    assert ms.messages() == []
    graph.access_token = ""
    graph_error(graph.send(simple_message()), 401, "InvalidAuthenticationToken")
    graph.access_token = "EwB-unknown"
    response = graph.send(simple_message())
    graph_error(response, 401, "InvalidAuthenticationToken")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_sent_items_lookup(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    prop = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name MailrelayId"
    message = simple_message(internetMessageId="<job-7@mailrelay.example>",
                             singleValueExtendedProperties=[{"id": prop, "value": "job-7"}])
    assert graph.send(message).status_code == 202
    assert graph.send(simple_message(subject="Unsaved"), saveToSentItems=False).status_code == 202

    def sent(user: str, folder: str, query: str) -> list[dict[str, Any]]:
        response = graph.call("GET", f"{user}/mailFolders/{folder}/messages",
                              params={"$filter": query, "$select": "id,internetMessageId,subject"})
        assert response.status_code == 200, response.text
        return list(response.json()["value"])

    [found] = sent("/me", "sentitems", "internetMessageId eq '<job-7@mailrelay.example>'")
    assert found["internetMessageId"] == "<job-7@mailrelay.example>" and found["subject"] == "Hello"
    assert set(found) == {"id", "@odata.etag", "internetMessageId", "subject"}
    assert sent(f"/users/{ADA}", "SentItems", "internetMessageId eq '<job-7@mailrelay.example>'") == [found]
    by_property = sent("/me", "sentItems", f"singleValueExtendedProperties/Any(ep: ep/id eq '{prop}' "
                                           "and ep/value eq 'job-7')")
    assert [m["id"] for m in by_property] == [found["id"]]
    assert sent("/me", "sentitems", f"singleValueExtendedProperties/any(p: p/id eq '{prop}' "
                                    "and p/value eq 'job-8')") == []
    assert sent("/me", "sentitems", "internetMessageId eq '<other@mailrelay.example>'") == []
    everything = graph.call("GET", "/me/mailFolders/sentitems/messages").json()["value"]
    assert [m["subject"] for m in everything] == ["Hello"]  # saveToSentItems false kept no copy
    graph_error(graph.call("GET", "/me/mailFolders/sentitems/messages", params={"$filter": "subject eq 'x'"}),
                400, "BadRequest")
    # The sender's own copy keeps its extended properties.
    expanded = graph.call("GET", f"/me/messages/{found['id']}",
                          params={"$expand": "singleValueExtendedProperties"}).json()
    assert expanded["singleValueExtendedProperties"] == [{"id": prop, "value": "job-7"}]


# --- Graph: drafts and upload sessions ----------------------------------------------------


def new_draft(graph: Graph) -> str:
    response = graph.call("POST", "/me/messages", json=simple_message(subject="Big one"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["isDraft"] is True and body["internetMessageId"]
    return str(body["id"])


def upload_session(graph: Graph, draft_id: str, size: int) -> str:
    response = graph.call("POST", f"/me/messages/{draft_id}/attachments/createUploadSession", json={
        "AttachmentItem": {"attachmentType": "file", "name": "data.bin", "size": size,
                           "contentType": "application/octet-stream"}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["nextExpectedRanges"] == ["0-"] and body["expirationDateTime"]
    return str(body["uploadUrl"])


def put_chunk(emulator: Emulator, url: str, data: bytes, first: int, total: int,
              length: int | None = None) -> requests.Response:
    # Deliberately no Authorization header: the upload URL carries its own token.
    last = first + (len(data) if length is None else length) - 1
    return requests.put(url, data=data, verify=str(emulator.bundle_path), timeout=60,
                        headers={"Content-Range": f"bytes {first}-{last}/{total}"})


def test_draft_upload_session_and_send(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    payload = os.urandom(10 * MiB + 12345)
    draft_id = new_draft(graph)
    url = upload_session(graph, draft_id, len(payload))
    offsets = [0, 4 * MiB, 8 * MiB, len(payload)]
    for i, (start, end) in enumerate(itertools.pairwise(offsets)):
        response = put_chunk(emulator, url, payload[start:end], start, len(payload))
        if i < 2:
            assert response.status_code == 200, response.text
            assert response.json()["nextExpectedRanges"] == [f"{end}-"]
        else:
            assert response.status_code == 201, response.text
    small = graph.call("POST", f"/me/messages/{draft_id}/attachments", json={
        "@odata.type": "#microsoft.graph.fileAttachment", "name": "note.txt", "contentBytes": b64(b"hi")})
    assert small.status_code == 201 and small.json()["size"] == 2
    sent = graph.call("POST", f"/me/messages/{draft_id}/send")
    assert sent.status_code == 202 and sent.content == b""
    [got] = ms.messages("ada.lovelace@example.org")
    assert got["provider"] == "graph" and got["subject"] == "Big one"
    assert [(a["filename"], a["size"], a["sha256"]) for a in got["attachments"]] == [
        ("data.bin", len(payload), hashlib.sha256(payload).hexdigest()),
        ("note.txt", 2, hashlib.sha256(b"hi").hexdigest())]
    stats = ms.stats()
    assert 0 < stats["max_chunk_bytes"] <= 4 * MiB
    assert list(stats["max_chunk_bytes_by_session"].values()) == [4 * MiB]
    # The draft is gone, the sent item is findable.
    graph_error(graph.call("POST", f"/me/messages/{draft_id}/send"), 404, "ErrorItemNotFound")
    assert len(graph.call("GET", "/me/mailFolders/sentitems/messages").json()["value"]) == 1


def test_chunks_over_4_mib_are_refused(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    payload = b"x" * (6 * MiB)
    url = upload_session(graph, new_draft(graph), len(payload))
    graph_error(put_chunk(emulator, url, payload[:4 * MiB + 1], 0, len(payload)), 413,
                "ErrorRequestEntityTooLarge")
    assert ms.stats()["max_chunk_bytes"] == 4 * MiB + 1  # every chunk seen counts
    assert put_chunk(emulator, url, payload[:4 * MiB], 0, len(payload)).status_code == 200
    small = graph.call("POST", f"/me/messages/{new_draft(graph)}/attachments/createUploadSession", json={
        "AttachmentItem": {"attachmentType": "file", "name": "tiny.bin", "size": 1000}})
    graph_error(small, 400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize")


def test_gap_then_resume_from_next_expected_ranges(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    payload = os.urandom(5 * MiB)
    draft_id = new_draft(graph)
    url = upload_session(graph, draft_id, len(payload))
    assert put_chunk(emulator, url, payload[:2 * MiB], 0, len(payload)).status_code == 200
    gap = put_chunk(emulator, url, payload[3 * MiB:], 3 * MiB, len(payload))
    graph_error(gap, 416, "InvalidRange")
    assert gap.json()["nextExpectedRanges"] == [f"{2 * MiB}-"]
    overlap = put_chunk(emulator, url, payload[MiB:3 * MiB], MiB, len(payload))
    assert overlap.status_code == 416
    # A client that lost track asks the session where to go on.
    status = requests.get(url, verify=str(emulator.bundle_path), timeout=10)
    assert status.status_code == 200
    [next_range] = status.json()["nextExpectedRanges"]
    start = int(next_range.split("-")[0])
    assert start == 2 * MiB
    mismatch = put_chunk(emulator, url, payload[start:], start, len(payload), length=10)
    graph_error(mismatch, 400, "ErrorInvalidRequest")
    assert put_chunk(emulator, url, payload[start:], start, len(payload)).status_code == 201
    assert requests.get(url, verify=str(emulator.bundle_path), timeout=10).json()["nextExpectedRanges"] == []
    graph_error(requests.put(url.split("?")[0] + "?authtoken=wrong", data=b"x", timeout=10,
                             verify=str(emulator.bundle_path), headers={"Content-Range": "bytes 0-0/1"}),
                404, "ErrorItemNotFound")
    assert graph.call("POST", f"/me/messages/{draft_id}/send").status_code == 202
    [got] = ms.messages("ada.lovelace@example.org")
    assert got["attachments"][0]["sha256"] == hashlib.sha256(payload).hexdigest()


# --- Graph: throttling and injected failures ----------------------------------------------


def test_four_requests_per_mailbox_at_once(emulator: Emulator, ms: EmulatorClient) -> None:
    graph = delegated(emulator, ms)
    other = delegated(emulator, ms, BOB)
    ms.inject(endpoint="graph.sendmail", latency_ms=1500)
    with ThreadPoolExecutor(max_workers=7) as pool:
        started = time.monotonic()
        mine = [pool.submit(graph.send, simple_message()) for _ in range(6)]
        bystander = pool.submit(other.send, simple_message())
        responses = [f.result() for f in mine]
    accepted = [r for r in responses if r.status_code == 202]
    throttled = [r for r in responses if r.status_code == 429]
    assert len(accepted) == 4 and len(throttled) == 2
    for response in throttled:
        graph_error(response, 429, "ApplicationThrottled")
        assert response.headers["Retry-After"] == "1"
    assert bystander.result().status_code == 202  # another mailbox has its own four
    assert time.monotonic() - started < 10
    stats = ms.stats()
    assert stats["max_concurrency_by_mailbox"][ADA] == 4
    assert stats["throttled_by_mailbox"][ADA] == 2
    assert len(ms.messages("ada.lovelace@example.org")) == 5


@pytest.mark.parametrize(("status", "reason", "code", "retry_after"), [
    (429, None, "TooManyRequests", "1"),
    (429, "ApplicationThrottled", "ApplicationThrottled", "1"),
    (503, None, "ServiceUnavailable", "1"),
    (403, None, "ErrorAccessDenied", None),
    (403, "ErrorSendAsDenied", "ErrorSendAsDenied", None),
    (403, "ErrorQuotaExceeded", "ErrorQuotaExceeded", None),
    (400, None, "ErrorInvalidRecipients", None),
    (404, None, "MailboxNotEnabledForRESTAPI", None),
])
def test_injected_graph_faults(emulator: Emulator, ms: EmulatorClient, status: int, reason: str | None,
                               code: str, retry_after: str | None) -> None:
    graph = delegated(emulator, ms)
    ms.inject(endpoint="graph.sendmail", status=status, reason=reason, count=1, mailbox=ADA)
    response = graph.send(simple_message())
    graph_error(response, status, code)
    assert response.headers.get("Retry-After") == retry_after
    assert ms.messages() == []
    assert graph.send(simple_message()).status_code == 202


def test_injected_faults_on_entra_and_uploads(emulator: Emulator, ms: EmulatorClient) -> None:
    grant = ms.ms_grant(APP_ID, ADA)
    ms.inject(endpoint="ms.token", status=503, retry_after=5, count=1, mailbox=ADA)
    failed = refresh(emulator, grant)
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "5"
    assert failed.json()["error"] == "temporarily_unavailable" and failed.json()["error_codes"]
    graph = Graph(emulator, refresh(emulator, grant).json()["access_token"])

    # A lost answer after the chunk was taken: the client asks where to go on.
    payload = os.urandom(3 * MiB)
    url = upload_session(graph, new_draft(graph), len(payload))
    ms.inject(endpoint="graph.upload_chunk", status=500, after_send=True, count=1)
    assert put_chunk(emulator, url, payload[:MiB], 0, len(payload)).status_code == 500
    status = requests.get(url, verify=str(emulator.bundle_path), timeout=10).json()
    assert status["nextExpectedRanges"] == [f"{MiB}-"]
    assert put_chunk(emulator, url, payload[MiB:], MiB, len(payload)).status_code == 201


def test_graph_log_lines_hold_no_secrets(emulator: Emulator, ms: EmulatorClient, emulator_log: Any) -> None:
    graph = delegated(emulator, ms)
    graph.send(simple_message(internetMessageId="<secret-id@example.com>"))
    graph.call("GET", "/me/mailFolders/sentitems/messages",
               params={"$filter": "internetMessageId eq '<secret-id@example.com>'"})
    url = upload_session(graph, new_draft(graph), 3 * MiB)
    log = emulator_log.getvalue()
    assert "POST /v1.0/me/sendMail 202 graph.sendmail" in log
    assert "POST /contoso.onmicrosoft.com/oauth2/v2.0/token 200 ms.token" in log
    for secret in (graph.access_token, APP_SECRET, "secret-id", url.split("authtoken=")[1]):
        assert secret not in log
