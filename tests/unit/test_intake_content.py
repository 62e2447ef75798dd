"""The content policy at intake: what is stored, what is refused, what is counted."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mailrelay.auth import accounts
from mailrelay.config import get_settings
from mailrelay.intake import take_in
from mailrelay.store import outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import MESSAGES

SENDER = "news@example.com"
HOSTILE = ('<p onclick="steal()">Hello <b>reader</b></p><script>alert(1)</script>'
           '<a href="javascript:alert(2)">click</a><img src="cid:logo" alt="Logo">')


@pytest.fixture
def account(clean_db: None) -> str:
    accounts.add("sink", SENDER)
    return SENDER


def _take(**fields: Any) -> Any:
    return take_in({"from": SENDER, "to": ["r@example.org"], "subject": "s", **fields},
                   request_id=None, actor="test")


def _stored(message_id: str) -> dict[str, Any]:
    with get_engine().connect() as conn:
        row = conn.execute(MESSAGES.select().where(MESSAGES.c.id == message_id)).one()
    return {"payload": json.loads(row.payload), "html_removed": row.html_removed}


def _png() -> dict[str, str]:
    return {"filename": "logo.png", "content_type": "image/png", "cid": "logo",
            "content": base64.b64encode(b"\x89PNG fake").decode()}


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_hostile_html_is_stored_clean_and_counted(account: str) -> None:
    before = _counter("mailrelay_html_removed_total", kind="element")
    accepted = _take(html=HOSTILE, inline=[_png()])
    assert accepted.result.state == "queued"
    stored = _stored(accepted.result.message_id)
    html = stored["payload"]["html"]
    assert "<script" not in html and "onclick" not in html and "javascript:" not in html
    assert 'src="cid:logo"' in html and "<b>reader</b>" in html
    assert stored["html_removed"] >= 3
    # A text alternative was made from the clean HTML.
    assert "Hello reader" in stored["payload"]["text"] and "alert" not in stored["payload"]["text"]
    assert _counter("mailrelay_html_removed_total", kind="element") > before
    info = outbox.status(accepted.result.message_id)
    assert info is not None and info["html_removed"] == stored["html_removed"]


def test_clean_html_and_the_producers_text_are_kept(account: str) -> None:
    html = '<table width="100%"><tr><td style="color: #333">Hi</td></tr></table>'
    accepted = _take(html=html, text="Hi (text)")
    stored = _stored(accepted.result.message_id)
    assert stored["payload"]["text"] == "Hi (text)" and stored["html_removed"] == 0
    assert 'style="color: #333"' in stored["payload"]["html"]


def test_policy_off_per_account_keeps_the_html(account: str) -> None:
    accounts.configure(SENDER, html_policy="off")
    accepted = _take(html=HOSTILE, text="t")
    stored = _stored(accepted.result.message_id)
    assert stored["payload"]["html"] == HOSTILE and stored["html_removed"] is None


def test_a_retry_is_recognised_by_the_producers_content(account: str) -> None:
    first = _take(html=HOSTILE, idempotency_key="k1")
    again = _take(html=HOSTILE, idempotency_key="k1")
    assert again.result.message_id == first.result.message_id and not again.result.created
    other = _take(html=HOSTILE + "<p>more</p>", idempotency_key="k1")
    assert (other.result.state, other.result.error_code) == ("rejected", "idempotency_conflict")


@pytest.mark.parametrize(("filename", "content_type"), [
    ("invoice.pdf.exe", "application/pdf"),
    ("setup.EXE", "application/octet-stream"),
    ("run.bat. ", "text/plain"),
    ("tool", "application/x-msdownload"),
])
def test_blocked_attachments_are_refused(account: str, filename: str, content_type: str) -> None:
    attachment = {"filename": filename, "content_type": content_type,
                  "content": base64.b64encode(b"MZ").decode()}
    accepted = _take(text="t", attachments=[attachment])
    assert (accepted.result.state, accepted.result.error_code) == ("rejected", "attachment_blocked")


def test_the_blocked_lists_are_settings(account: str, monkeypatch: pytest.MonkeyPatch) -> None:
    attachment = {"filename": "notes.exe", "content_type": "application/octet-stream",
                  "content": base64.b64encode(b"MZ").decode()}
    monkeypatch.setenv("MAILRELAY_BLOCKED_EXTENSIONS", "none")
    monkeypatch.setenv("MAILRELAY_BLOCKED_CONTENT_TYPES", "none")
    get_settings.cache_clear()
    try:
        assert _take(text="t", attachments=[attachment]).result.state == "queued"
        monkeypatch.setenv("MAILRELAY_BLOCKED_EXTENSIONS", "pdf, .docx")
        get_settings.cache_clear()
        pdf = {**attachment, "filename": "report.PDF"}
        assert _take(text="t", attachments=[pdf]).result.error_code == "attachment_blocked"
        assert _take(text="t", attachments=[attachment]).result.state == "queued"
    finally:
        get_settings.cache_clear()


def test_an_html_body_too_large_to_sanitize_is_refused(account: str) -> None:
    from mailrelay.content.policy import SANITIZE_LIMIT

    accepted = _take(html="<p>" + "x" * SANITIZE_LIMIT + "</p>")
    assert (accepted.result.state, accepted.result.error_code) == ("rejected", "message_too_large")
    accounts.configure(SENDER, html_policy="off")  # the way out for a producer who needs it
    assert _take(html="<p>" + "x" * SANITIZE_LIMIT + "</p>").result.state == "queued"


def test_a_redelivered_request_is_not_sanitized_twice(account: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Intake found its request stored already (a redelivery): a large HTML body is not
    run through the sanitizer again, which is what would cost (a hostile one, most)."""
    from mailrelay.content import policy

    raw = {"from": SENDER, "to": ["r@example.org"], "subject": "s",
           "html": "<p>" + "big " * 10_000 + "</p>"}
    first = take_in(raw, request_id="req-1", actor="test")
    assert first.result.state == "queued" and first.result.created

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("sanitized again")

    monkeypatch.setattr(policy, "sanitize", must_not_run)
    again = take_in(raw, request_id="req-1", actor="test")
    assert again.result.message_id == first.result.message_id and not again.result.created
    assert again.provider == "sink"
