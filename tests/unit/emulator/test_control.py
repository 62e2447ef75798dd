from __future__ import annotations

import html
import re

import pytest
import requests

from mailrelay.emulator import Emulator, EmulatorClient
from mailrelay.emulator.client import EmulatorError
from mailrelay.emulator.inbox import CONTENT_SECURITY_POLICY
from tests.unit.emulator.conftest import CLIENT_ID, Account, b64, message

LOGO = b"\x89PNG\r\n\x1a\nlogo"


def test_reset_keeps_clients_and_grants_unless_all(account: Account, control: EmulatorClient) -> None:
    account.send(message())
    control.inject(endpoint="gmail.send", status=500)
    control.reset()
    assert control.messages() == [] and control.faults() == []
    assert account.token().status_code == 200 and account.send(message()).status_code == 200
    control.reset(everything=True)
    assert account.token().status_code == 401  # the client is gone
    with pytest.raises(EmulatorError, match="404"):
        control.grant(CLIENT_ID, "ada@example.org")


def test_messages_filter_raw_and_parts(emulator: Emulator, account: Account, control: EmulatorClient) -> None:
    raw = message(to=["ada@example.org", "bob@example.org"], html="<img src=cid:Logo>",
                  inline=[{"filename": "logo.png", "content_type": "image/png", "content": b64(LOGO),
                           "cid": "Logo"}])
    account.send(raw)
    account.send(message(subject="Second"))
    ada = control.messages("ADA@example.org")
    assert [m["subject"] for m in ada] == ["Second", "Hello"]  # newest first
    assert [m["mailbox"] for m in control.messages("bob@example.org")] == ["bob@example.org"]
    assert control.raw(ada[1]["id"]) == raw

    url = f"{emulator.url}/_emulator/api/messages/{ada[1]['id']}/parts/logo"  # cids match loosely
    part = requests.get(url, verify=emulator.bundle_path, timeout=10)
    assert part.status_code == 200 and part.content == LOGO
    assert part.headers["Content-Type"] == "image/png"
    assert part.headers["X-Content-Type-Options"] == "nosniff"
    missing = requests.get(url.replace("/logo", "/nope"), verify=emulator.bundle_path, timeout=10)
    assert missing.status_code == 404
    with pytest.raises(EmulatorError, match="404"):
        control.raw("0123456789abcdef")


def test_inbox_page(emulator: Emulator, account: Account) -> None:
    raw = message(
        to=["Ada <ada@example.org>"], subject="Report <q3> & more", text="plain <b>text</b>",
        html="<p onclick=\"x()\">Hi</p><img src=\"cid:logo\"><script>document.title='pwned'</script>",
        inline=[{"filename": "logo.png", "content_type": "image/png", "content": b64(LOGO), "cid": "logo"}],
        attachments=[{"filename": "q3 <final>.pdf", "content_type": "application/pdf",
                      "content": b64(b"%PDF")}])
    account.send(raw)
    page = requests.get(f"{emulator.url}/inbox/ada@example.org", verify=emulator.bundle_path, timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    body = page.text
    assert "Report &lt;q3&gt; &amp; more" in body
    assert "plain &lt;b&gt;text&lt;/b&gt;" in body
    assert "q3 &lt;final&gt;.pdf" in body and "<script>" not in body
    frame = re.search(r'<iframe sandbox="" title="HTML body" srcdoc="([^"]*)"></iframe>', body)
    assert frame is not None
    document = html.unescape(frame.group(1))
    [summary] = EmulatorClient(emulator.url, verify=emulator.bundle_path).messages("ada@example.org")
    assert f'src="/_emulator/api/messages/{summary["id"]}/parts/logo"' in document
    assert "<script>" in document  # shown as written, and kept from running by the sandbox
    assert summary["attachments"][0]["sha256"] in body

    everyone = requests.get(f"{emulator.url}/inbox", verify=emulator.bundle_path, timeout=10)
    assert everyone.status_code == 200 and "ada@example.org" in everyone.text
    empty = requests.get(f"{emulator.url}/inbox/nobody@example.org", verify=emulator.bundle_path, timeout=10)
    assert "No messages yet." in empty.text


def test_settings_validation(control: EmulatorClient) -> None:
    with pytest.raises(EmulatorError, match="400"):
        control.set_token_ttl(-1)
    with pytest.raises(EmulatorError, match="400"):
        control.revoke()
