"""Gmail end to end: real workers, Redis and PostgreSQL, the HTTPS emulator, google-auth."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest

from mailrelay.client import submit
from mailrelay.store import outbox
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import final, scalar, wait_for
from tests.processes import Worker

pytestmark = pytest.mark.integration

SENDER = "sender@example.com"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def message(**extra: Any) -> dict[str, Any]:
    return {"from": SENDER, "to": ["Ada <ada@example.org>"], "subject": "Hello", "text": "hi", **extra}


@pytest.fixture
def gmail_worker(gmail_account: str, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker("mailrelay.gmail", concurrency=4)


def test_rich_message_arrives_with_its_structure(emulator: EmulatorHandle, gmail_worker: Worker) -> None:
    images = {f"img{n}@mailrelay": os.urandom(2000 + n) for n in (1, 2)}
    files = {f"report-{n}.bin": os.urandom(5000 + n) for n in (1, 2)}
    result = submit(message(
        cc=["Bob <bob@example.net>"], bcc=["hidden@example.com"], subject="Quarterly ✓",
        html="<p>Report</p>" + "".join(f'<img src="cid:{cid}">' for cid in images),
        inline=[{"filename": f"{cid}.png", "content_type": "image/png", "content": b64(data), "cid": cid}
                for cid, data in images.items()],
        attachments=[{"filename": name, "content_type": "application/octet-stream", "content": b64(data)}
                     for name, data in files.items()]))
    info = final(result.message_id)
    assert info["state"] == "sent", info
    received = emulator.client.messages(mailbox="ada@example.org")
    assert len(received) == 1
    got = received[0]
    assert got["structure"].startswith("multipart/mixed > multipart/related > multipart/alternative")
    assert got["message_id"].strip("<>") == info["message_id_header"].strip("<>")
    assert {p["cid"].strip("<>"): p["sha256"] for p in got["inline"]} == {
        cid: hashlib.sha256(data).hexdigest() for cid, data in images.items()}
    assert {a["filename"]: a["sha256"] for a in got["attachments"]} == {
        name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert got["subject"] == "Quarterly ✓"
    # Bcc delivered, and invisible to the others.
    hidden = emulator.client.messages(mailbox="hidden@example.com")
    assert len(hidden) == 1
    raw = emulator.client.raw(got["id"])
    assert b"hidden@example.com" not in raw and b"Bcc:" not in raw
    assert info["provider_message_id"]
    # Nothing personal or secret in the worker's log.
    log = gmail_worker.log_path.read_text(errors="replace")
    assert "deliver" in log
    for needle in ("Quarterly", "ada@example.org", "hidden@example.com", "Report", "client-secret",
                   SENDER):
        assert needle not in log, needle


def test_a_20_mb_attachment_goes_through_the_upload_path(emulator: EmulatorHandle,
                                                       gmail_worker: Worker) -> None:
    big = os.urandom(20 * 1024 * 1024)
    result = submit(message(attachments=[{"filename": "big.bin", "content_type": "application/octet-stream",
                                          "content": b64(big)}]))
    assert final(result.message_id, timeout=180)["state"] == "sent"
    stats = emulator.client.stats()["requests"]
    assert stats.get("gmail.upload") == 1 and not stats.get("gmail.send")
    got = emulator.client.messages(mailbox="ada@example.org")[0]
    assert got["attachments"][0]["sha256"] == hashlib.sha256(big).hexdigest()


def test_a_herd_meeting_an_expired_token_refreshes_once(
        emulator: EmulatorHandle, gmail_account: str, start_worker: Callable[..., Worker]) -> None:
    start_worker("mailrelay.gmail", concurrency=4)
    start_worker("mailrelay.gmail", concurrency=4)
    assert final(submit(message()).message_id)["state"] == "sent"  # a token is cached now
    emulator.client.expire_tokens()
    emulator.client.reset()
    ids = [submit(message(subject=f"herd {i}")).message_id for i in range(50)]
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == 51, 120, "51 sent")
    stats = emulator.client.stats()["requests"]
    assert stats.get("google.token") == 1, stats
    # Every one delivered once; the 401s before the refresh cost a resend, not a message.
    assert len(emulator.client.messages(mailbox="ada@example.org")) == 50
    assert all((outbox.status(i) or {})["attempt_count"] == 1 for i in ids)


def _parked(message_id: str) -> dict[str, Any]:
    def settled() -> bool:
        info = outbox.status(message_id) or {}
        return (info.get("state"), info.get("error_code")) == ("retrying", "auth_revoked")

    wait_for(settled, 60, f"message {message_id} to be parked")
    info = outbox.status(message_id)
    assert info is not None
    return info


def test_a_revoked_grant_parks_messages_without_asking_again(
        emulator: EmulatorHandle, gmail_worker: Worker) -> None:
    emulator.client.revoke(email=SENDER)
    first = _parked(submit(message()).message_id)
    assert len(first["attempts"]) == 1
    # Parked until the retry window closes (or a reconnect resumes it): no countdown.
    assert dt.datetime.fromisoformat(first["next_attempt_at"]) > (
        dt.datetime.fromisoformat(first["created_at"]) + dt.timedelta(hours=23))
    from mailrelay.auth import accounts

    assert accounts.credentials(SENDER).state == "reauth_required"
    later = [submit(message(subject=f"later {i}")).message_id for i in range(10)]
    for mid in later:
        assert len(_parked(mid)["attempts"]) == 1
    assert emulator.client.stats()["requests"].get("google.token") == 1
    assert emulator.client.messages() == []


def test_a_parked_message_fails_with_auth_revoked_when_its_window_closes(
        emulator: EmulatorHandle, gmail_account: str, start_worker: Callable[..., Worker]) -> None:
    from mailrelay.reconcile import reconcile
    from mailrelay.store.outbox import utcnow
    from mailrelay.tasks.routing import enqueue_delivery

    window = 60  # the shortest retry window the settings allow
    # A countdown no longer than 1 s: the wait stays parked in the database, as a day-long
    # window's would, and only the reconciler brings it back.
    start_worker("mailrelay.gmail", concurrency=2,
                 extra_env={"MAILRELAY_RETRY_MAX_AGE": str(window), "MAILRELAY_COUNTDOWN_MAX": "1"})
    emulator.client.revoke(email=SENDER)
    parked = _parked(submit(message()).message_id)
    deadline = dt.datetime.fromisoformat(parked["next_attempt_at"])
    assert deadline == dt.datetime.fromisoformat(parked["created_at"]) + dt.timedelta(seconds=window)
    # Nobody reconnects: the reconciler finds it due at the deadline and the last try fails it.
    wait_for(lambda: utcnow() >= deadline, window + 10, "the retry window to close")
    assert reconcile(enqueue_delivery, now=utcnow() + dt.timedelta(hours=1)) == 1
    info = final(parked["id"])
    assert (info["state"], info["error_code"]) == ("failed", "auth_revoked")
    assert "not reconnected within the retry window" in info["error_detail"]
    assert len(info["attempts"]) == 2
    assert emulator.client.stats()["requests"].get("google.token") == 1
    assert emulator.client.messages() == []


def test_429_waits_for_retry_after(emulator: EmulatorHandle, gmail_worker: Worker) -> None:
    emulator.client.inject(endpoint="gmail.send", status=429, count=1, retry_after=2)
    info = final(submit(message()).message_id)
    assert info["state"] == "sent"
    first, second = info["attempts"]
    assert first["error_code"] == "rate_limited"
    gap = dt.datetime.fromisoformat(second["started_at"]) - dt.datetime.fromisoformat(first["finished_at"])
    assert gap >= dt.timedelta(seconds=2)


def test_a_lost_response_is_verified_not_resent(emulator: EmulatorHandle, gmail_worker: Worker) -> None:
    emulator.client.inject(endpoint="gmail.send", drop=True, after_send=True, count=1)
    info = final(submit(message()).message_id)
    assert info["state"] == "sent"
    assert [a["outcome"] for a in info["attempts"]] == ["retry", "sent"]
    assert "not sent again" in info["attempts"][1]["detail"]
    assert len(emulator.client.messages(mailbox="ada@example.org")) == 1
    assert emulator.client.stats()["requests"].get("gmail.list") == 1


def test_a_5xx_storm_is_retried_until_it_passes(emulator: EmulatorHandle, gmail_worker: Worker) -> None:
    emulator.client.inject(endpoint="gmail.send", status=503, count=3, retry_after=1)
    info = final(submit(message()).message_id)
    assert info["state"] == "sent"
    assert [a["error_code"] for a in info["attempts"]] == ["provider_unavailable"] * 3 + [None]


def test_an_invalid_recipient_fails_permanently(emulator: EmulatorHandle, gmail_worker: Worker) -> None:
    info = final(submit(message(to=["nobody@mailbox.invalid"])).message_id)
    assert (info["state"], info["error_code"], len(info["attempts"])) == ("failed", "invalid_recipient", 1)


def test_a_wrong_client_secret_is_a_clear_permanent_error(
        emulator: EmulatorHandle, gmail_account: str, start_worker: Callable[..., Worker]) -> None:
    from sqlalchemy import update

    from mailrelay.auth import crypto
    from mailrelay.store.db import get_engine
    from mailrelay.store.models import ACCOUNTS

    with get_engine().begin() as conn:
        conn.execute(update(ACCOUNTS).values(client_secret_enc=crypto.encrypt("wrong")))
    start_worker("mailrelay.gmail", concurrency=2)
    info = final(submit(message()).message_id)
    assert (info["state"], info["error_code"]) == ("failed", "invalid_credentials")
    assert "wrong" not in str(info)
