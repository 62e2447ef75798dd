"""An emulator per test, in-process, and a Gmail account on it to send with."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from mailrelay.emulator import Emulator, EmulatorClient, start
from mailrelay.message import build_mime, make_message_id, validate

CLIENT_ID = "test-client.apps.googleusercontent.com"
CLIENT_SECRET = "test-secret"
SENDER = "sender@example.com"


class Account:
    """A mailbox with a grant and a live access token, and the calls the adapter makes."""

    def __init__(self, emulator: Emulator, email: str) -> None:
        self.emulator = emulator
        self.email = email
        self.verify = str(emulator.bundle_path)
        self.control = EmulatorClient(emulator.url, verify=emulator.bundle_path)
        self.refresh_token = self.control.grant(CLIENT_ID, email)
        self.access_token = self.token().json()["access_token"]

    def token(self, **overrides: str) -> requests.Response:
        form = {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET, "refresh_token": self.refresh_token, **overrides}
        return requests.post(f"{self.emulator.url}/token", data=form, verify=self.verify, timeout=30)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    def send(self, raw: bytes, user: str = "me", **extra: Any) -> requests.Response:
        body = {"raw": base64.urlsafe_b64encode(raw).decode("ascii"), **extra}
        return requests.post(f"{self.emulator.url}/gmail/v1/users/{user}/messages/send", json=body,
                             headers=self.headers(), verify=self.verify, timeout=30)

    def upload_media(self, raw: bytes) -> requests.Response:
        return requests.post(
            f"{self.emulator.url}/upload/gmail/v1/users/me/messages/send",
            params={"uploadType": "media"}, data=raw, verify=self.verify, timeout=60,
            headers={**self.headers(), "Content-Type": "message/rfc822"})

    def upload_multipart(self, raw: bytes, metadata: bytes = b"{}",
                         line_break: bytes = b"\r\n") -> requests.Response:
        boundary = "==emulator-test-boundary=="
        crlf = line_break
        body = (b"--" + boundary.encode() + crlf + b"Content-Type: application/json; charset=UTF-8"
                + crlf + crlf + metadata + crlf + b"--" + boundary.encode() + crlf
                + b"Content-Type: message/rfc822" + crlf + crlf + raw + crlf
                + b"--" + boundary.encode() + b"--" + crlf)
        return requests.post(
            f"{self.emulator.url}/upload/gmail/v1/users/me/messages/send",
            params={"uploadType": "multipart"}, data=body, verify=self.verify, timeout=60,
            headers={**self.headers(), "Content-Type": f'multipart/related; boundary="{boundary}"'})

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(f"{self.emulator.url}/gmail/v1/users/me/{path}", params=params,
                            headers=self.headers(), verify=self.verify, timeout=30)


@pytest.fixture
def emulator_log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def emulator(tmp_path: Path, emulator_log: io.StringIO) -> Iterator[Emulator]:
    running = start(state_dir=tmp_path / "state", log_stream=emulator_log)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def control(emulator: Emulator) -> EmulatorClient:
    client = EmulatorClient(emulator.url, verify=emulator.bundle_path)
    client.register_client(CLIENT_ID, CLIENT_SECRET)
    return client


@pytest.fixture
def account(emulator: Emulator, control: EmulatorClient) -> Account:
    return Account(emulator, SENDER)


def message(message_id: str | None = None, **fields: Any) -> bytes:
    """RFC 822 bytes as mailrelay builds them; Bcc included, as the Gmail API wants it."""
    payload = {"from": SENDER, "to": ["Ada Lovelace <ada@example.org>"], "subject": "Hello",
               "text": "Hello Ada", **fields}
    message_id = message_id or make_message_id(uuid.uuid4().hex, "example.com")
    return build_mime(validate(payload), message_id=message_id,
                      date=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), include_bcc=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
