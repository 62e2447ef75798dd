"""The emulator's inbox page as a person sees it, in headless Chromium.

A delivered message carries a script, an inline image by cid and an attachment. The page
must show the headers and the attachment's digest, load the image through the parts
URL under its Content-Security-Policy, and never run the script. Chromium comes from
Debian (apt-get install chromium chromium-driver); CI installs it in its setup.
"""

from __future__ import annotations

import base64
import html
import io
import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from mailrelay.emulator import Emulator, EmulatorClient, start
from mailrelay.message import build_mime, make_message_id, validate

CHROMIUM = Path("/usr/bin/chromium")
SENDER = "reports@example.com"
MAILBOX = "ada@example.org"
# Written by the script only if it runs; assembled at run time so the page source,
# which shows the script as text, does not contain them.
MARKERS = ("SCRIPT-RAN-IN-FRAME", "SCRIPT-TOUCHED-PARENT")
SCRIPT = (
    "<script>"
    "document.body.insertAdjacentText('beforeend', ['SCRIPT', 'RAN', 'IN', 'FRAME'].join('-'));"
    "try { parent.document.body.insertAdjacentText('beforeend', "
    "['SCRIPT', 'TOUCHED', 'PARENT'].join('-')); } catch (e) {}"
    # A request the emulator would log: evidence even where the DOM is out of reach.
    "new Image().src = '/inbox/' + ['canary', 'script', 'ran'].join('-');"
    "</script>"
)
PDF = b"%PDF-1.4\n% quarterly figures\n" + b"0" * 2048

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install chromium"),
]


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, so the test needs no image files or imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


LOGO = png(160, 60, (200, 30, 30))


@pytest.fixture
def browser_log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def browser_emulator(tmp_path: Path, browser_log: io.StringIO) -> Iterator[Emulator]:
    running = start(state_dir=tmp_path / "emulator", log_stream=browser_log)
    try:
        yield running
    finally:
        running.stop()


def deliver(emulator: Emulator) -> dict[str, str]:
    control = EmulatorClient(emulator.url, verify=emulator.bundle_path)
    control.register_client("browser-test", "browser-secret")
    refresh_token = control.grant("browser-test", SENDER)
    token = requests.post(f"{emulator.url}/token", verify=emulator.bundle_path, timeout=10, data={
        "grant_type": "refresh_token", "client_id": "browser-test", "client_secret": "browser-secret",
        "refresh_token": refresh_token}).json()["access_token"]
    message = validate({
        "from": f"Quarterly Reports <{SENDER}>", "to": [f"Ada Lovelace <{MAILBOX}>"],
        "subject": "Q3 figures are in", "text": "The figures are attached.",
        "html": "<h2 style='color:#0a6'>Hello Ada</h2><p>Our logo: <img src='cid:logo@reports' "
                f"alt='logo' width='160' height='60'></p><p>The figures are attached.</p>{SCRIPT}",
        "inline": [{"filename": "logo.png", "content_type": "image/png",
                    "content": base64.b64encode(LOGO).decode(), "cid": "logo@reports"}],
        "attachments": [{"filename": "q3-figures.pdf", "content_type": "application/pdf",
                         "content": base64.b64encode(PDF).decode()}],
    })
    raw = build_mime(message, message_id=make_message_id("browser-1", "example.com"), date=datetime.now(UTC))
    response = requests.post(f"{emulator.url}/gmail/v1/users/me/messages/send", verify=emulator.bundle_path,
                             json={"raw": base64.urlsafe_b64encode(raw).decode()}, timeout=10,
                             headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    [summary] = control.messages(MAILBOX)
    return summary


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--ignore-certificate-errors", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_inbox_page_in_chromium(browser_emulator: Emulator, browser_log: io.StringIO, tmp_path: Path) -> None:
    summary = deliver(browser_emulator)
    page = f"{browser_emulator.url}/inbox/{MAILBOX}"

    dom = chromium(tmp_path / "profile", "--dump-dom", page).stdout
    assert "Q3 figures are in" in dom
    assert "Quarterly Reports &lt;reports@example.com&gt;" in dom
    assert "q3-figures.pdf" in dom
    assert summary["attachments"][0]["sha256"] in dom
    for marker in MARKERS:
        assert marker not in dom, "the message's script ran"
    frame = re.search(r'<iframe sandbox="" [^>]*srcdoc="([^"]*)"', dom)
    assert frame is not None, "the HTML body is not in a sandboxed iframe"
    source = re.search(r"<img src='([^']+)'", html.unescape(frame.group(1)))
    assert source is not None
    image_path = source.group(1)
    assert image_path == f"/_emulator/api/messages/{summary['id']}/parts/logo%40reports"

    log = browser_log.getvalue()
    # The browser itself fetched the image (so the page's CSP allowed it), and got it.
    assert f"GET {image_path} 200 emulator.part" in log, log
    assert "canary-script-ran" not in log, "the message's script ran"
    served = requests.get(f"{browser_emulator.url}{image_path}", verify=browser_emulator.bundle_path,
                          timeout=10)
    assert served.status_code == 200 and served.content == LOGO
    assert served.headers["Content-Type"] == "image/png"

    screenshot = tmp_path / "inbox.png"
    chromium(tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1200,1600", page)
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1600)
    assert "canary-script-ran" not in browser_log.getvalue()
