from __future__ import annotations

import base64
import hashlib
import io
import re
import socket
import ssl

import pytest
import requests

from mailrelay.emulator import Emulator, EmulatorClient
from tests.unit.emulator.conftest import SENDER, Account, b64, message

LOGO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"q3 report " * 500


def invalid_to(address: str) -> dict[str, object]:
    text = f"Invalid To header: '{address}'"
    return {"error": {"code": 400, "message": text, "errors": [
        {"message": text, "domain": "global", "reason": "invalidArgument"}],
        "status": "INVALID_ARGUMENT"}}


def rich_message(message_id: str | None = None) -> bytes:
    return message(
        message_id=message_id,
        to=["Ada Lovelace <ada@example.org>"], cc=["Bob <bob@example.org>"],
        bcc=["Hidden <hidden@example.org>"], subject="Quarterly report",
        text="See attached.", html="<p>See attached.</p><img src='cid:logo@mailrelay'>",
        inline=[{"filename": "logo.png", "content_type": "image/png", "content": b64(LOGO),
                 "cid": "logo@mailrelay"}],
        attachments=[{"filename": "q3.pdf", "content_type": "application/pdf", "content": b64(PDF)}])


def check_delivered(control: EmulatorClient, raw: bytes) -> None:
    inbox = control.messages("ada@example.org")
    assert len(inbox) == 1
    got = inbox[0]
    assert got["mailbox"] == "ada@example.org"
    assert got["from"] == SENDER and got["to"] == ["Ada Lovelace <ada@example.org>"]
    assert got["cc"] == ["Bob <bob@example.org>"] and got["subject"] == "Quarterly report"
    assert got["text"].strip() == "See attached."
    assert "cid:logo@mailrelay" in got["html"]
    assert got["structure"] == "multipart/mixed > multipart/related > multipart/alternative"
    assert got["inline"] == [{"cid": "logo@mailrelay", "content_type": "image/png", "filename": "logo.png",
                              "size": len(LOGO), "sha256": hashlib.sha256(LOGO).hexdigest()}]
    assert got["attachments"] == [{"filename": "q3.pdf", "content_type": "application/pdf",
                                   "size": len(PDF), "sha256": hashlib.sha256(PDF).hexdigest()}]
    assert got["message_id"] and got["date"] and got["received_at"]
    assert got["size"] == len(control.raw(got["id"]))
    assert control.part(got["id"], "logo@mailrelay") == LOGO


def test_send_through_the_metadata_path(account: Account, control: EmulatorClient) -> None:
    raw = rich_message()
    response = account.send(raw)
    assert response.status_code == 200
    body = response.json()
    assert re.fullmatch(r"[0-9a-f]{16}", body["id"])
    assert body["threadId"] == body["id"] and body["labelIds"] == ["SENT"]
    check_delivered(control, raw)


def test_send_through_upload_media(account: Account, control: EmulatorClient) -> None:
    raw = rich_message()
    response = account.upload_media(raw)
    assert response.status_code == 200, response.text
    assert response.json()["labelIds"] == ["SENT"]
    check_delivered(control, raw)


@pytest.mark.parametrize("line_break", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_send_through_upload_multipart(account: Account, control: EmulatorClient,
                                       line_break: bytes) -> None:
    raw = rich_message()
    first = account.upload_multipart(raw, line_break=line_break)
    assert first.status_code == 200, first.text
    [copy] = control.messages("ada@example.org")
    # The message part arrives byte for byte, minus the Bcc header only.
    assert control.raw(copy["id"]) == re.sub(rb"Bcc:[^\n]*\n", b"", raw)
    check_delivered(control, raw)

    metadata = f'{{"threadId": "{first.json()["threadId"]}"}}'.encode()
    reply = account.upload_multipart(message(), metadata=metadata)
    assert reply.status_code == 200
    assert reply.json()["threadId"] == first.json()["threadId"] != reply.json()["id"]


def test_bcc_is_delivered_but_never_shown(account: Account, control: EmulatorClient) -> None:
    assert b"hidden@example.org" in rich_message()
    assert account.send(rich_message()).status_code == 200
    hidden = control.messages("hidden@example.org")
    assert len(hidden) == 1
    everyone = control.messages()
    assert {m["mailbox"] for m in everyone} == {"ada@example.org", "bob@example.org", "hidden@example.org"}
    for copy in everyone:
        raw = control.raw(copy["id"])
        assert b"hidden@example.org" not in raw and b"\nBcc:" not in raw


def test_recipients_in_invalid_domains_are_refused(account: Account, control: EmulatorClient) -> None:
    # The refused address is named (as the message has it: domains are written lowercase).
    for fields, named in (({"to": ["nobody@example.invalid"]}, "nobody@example.invalid"),
                          ({"bcc": ["x@mail.example.INVALID"]}, "x@mail.example.invalid")):
        response = account.send(message(**fields))
        assert response.status_code == 400
        assert response.json() == invalid_to(named)
    assert control.messages() == []


def test_messages_without_recipients_are_refused(account: Account) -> None:
    raw = b"From: sender@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    response = account.send(raw)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Recipient address required"


def test_bad_metadata_bodies(account: Account) -> None:
    url = f"{account.emulator.url}/gmail/v1/users/me/messages/send"
    for body in (b"not json", b'{"raw": 5}', b'{"raw": "***"}', b"[]"):
        response = requests.post(url, data=body, headers=account.headers(), verify=account.verify, timeout=10)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == 400


def test_size_limits(account: Account, control: EmulatorClient) -> None:
    big = message(attachments=[{"filename": "big.bin", "content_type": "application/octet-stream",
                                "content": b64(b"\0" * (4 * 1024 * 1024))}])
    assert 5 * 1024 * 1024 < len(base64.urlsafe_b64encode(big)) < 35 * 1024 * 1024
    response = account.send(big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413
    # The adapter's way for such a message: the upload path.
    assert account.upload_media(big).status_code == 200

    huge = b"To: ada@example.org\r\n\r\n" + b"x" * (35 * 1024 * 1024)
    response = account.upload_media(huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == 413
    assert len(control.messages("ada@example.org")) == 1


def test_bodies_over_40_mb_are_refused_unread(emulator: Emulator, account: Account) -> None:
    context = ssl.create_default_context(cafile=str(emulator.ca_path))
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"POST /upload/gmail/v1/users/me/messages/send?uploadType=media HTTP/1.1\r\n"
                    b"Host: 127.0.0.1\r\nContent-Type: message/rfc822\r\n"
                    b"Content-Length: 50000000\r\n\r\n" + b"x" * 1000)
        answer = io.BytesIO()
        while chunk := tls.recv(65536):
            answer.write(chunk)
    head = answer.getvalue()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in head


def test_missing_unknown_or_foreign_credentials(account: Account) -> None:
    raw = message()
    account.access_token = "ya29.unknown"
    response = account.send(raw)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="https://accounts.google.com/", error="invalid_token"')
    error = response.json()["error"]
    assert error["code"] == 401 and error["errors"][0]["reason"] == "authError"
    response = requests.post(f"{account.emulator.url}/gmail/v1/users/me/messages/send", json={"raw": "eA"},
                             verify=account.verify, timeout=10)
    assert response.status_code == 401


def test_user_id_must_be_me_or_the_token_owner(account: Account) -> None:
    assert account.send(message(), user=SENDER).status_code == 200
    response = account.send(message(), user="someone-else@example.com")
    assert response.status_code == 403
    assert response.json()["error"]["errors"][0]["reason"] == "forbidden"


def test_lookup_by_rfc822msgid(account: Account) -> None:
    raw = rich_message(message_id="<lookup-1@example.com>")
    sent = account.send(raw).json()
    for query in ("rfc822msgid:<lookup-1@example.com>", "rfc822msgid:lookup-1@example.com"):
        response = account.get("messages", q=query)
        assert response.status_code == 200
        assert response.json() == {"messages": [{"id": sent["id"], "threadId": sent["threadId"]}],
                                   "resultSizeEstimate": 1}
    assert account.get("messages", q="rfc822msgid:<other@example.com>").json() == {"resultSizeEstimate": 0}


def test_lookup_sees_only_the_token_owners_sent_items(emulator: Emulator, account: Account) -> None:
    account.send(rich_message(message_id="<mine@example.com>"))
    other = Account(emulator, "other@example.com")
    assert other.get("messages", q="rfc822msgid:<mine@example.com>").json() == {"resultSizeEstimate": 0}


def test_profile(account: Account) -> None:
    account.send(message())
    response = account.get("profile")
    assert response.status_code == 200
    body = response.json()
    assert body["emailAddress"] == SENDER and body["messagesTotal"] == 1 and body["threadsTotal"] == 1
    assert isinstance(body["historyId"], str)


def test_unknown_paths_and_methods(emulator: Emulator) -> None:
    response = requests.get(f"{emulator.url}/nowhere", verify=emulator.bundle_path, timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == 404
    response = requests.get(f"{emulator.url}/token", verify=emulator.bundle_path, timeout=10)
    assert response.status_code == 405


def test_log_lines_name_requests_but_no_secrets(account: Account, emulator_log: io.StringIO) -> None:
    account.send(message())
    account.get("messages", q="rfc822msgid:<secret-query@example.com>")
    log = emulator_log.getvalue()
    assert "emulator: POST /token 200 google.token" in log
    assert "emulator: POST /gmail/v1/users/me/messages/send 200 gmail.send" in log
    assert "emulator: GET /gmail/v1/users/me/messages?q 200 gmail.list" in log
    for secret in (account.access_token, account.refresh_token, "secret-query", "test-secret"):
        assert secret not in log
