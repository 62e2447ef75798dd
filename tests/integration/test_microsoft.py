"""Microsoft 365 end to end: real workers, MSAL against the emulator's Entra ID, Graph."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from mailrelay.auth import accounts
from mailrelay.client import submit
from mailrelay.store import outbox
from tests.integration.conftest import MS_TENANT, EmulatorHandle
from tests.integration.helpers import final, scalar, wait_for
from tests.processes import Worker

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def message(sender: str, **extra: Any) -> dict[str, Any]:
    return {"from": sender, "to": ["Ada <ada@example.org>"], "subject": "Hello", "text": "hi", **extra}


def test_delegated_send_with_an_inline_image_and_an_attachment(
        emulator: EmulatorHandle, ms_account: str, start_worker: Callable[..., Worker]) -> None:
    start_worker("mailrelay.microsoft", concurrency=2)
    image, doc = os.urandom(3000), os.urandom(7000)
    inline = [{"filename": "logo.png", "content_type": "image/png", "content": b64(image), "cid": "logo@x"}]
    files = [{"filename": "doc.bin", "content_type": "application/octet-stream", "content": b64(doc)}]
    info = final(submit(message(ms_account, html='<p>Hi</p><img src="cid:logo@x">',
                                headers={"X-Campaign": "q3"}, inline=inline,
                                attachments=files)).message_id)
    assert info["state"] == "sent", info
    got = emulator.client.messages(mailbox="ada@example.org")
    assert len(got) == 1
    part = got[0]["inline"][0]
    assert part["cid"].strip("<>") == "logo@x" and part["sha256"] == hashlib.sha256(image).hexdigest()
    assert got[0]["attachments"][0]["sha256"] == hashlib.sha256(doc).hexdigest()


def test_app_only_send(emulator: EmulatorHandle, clean_db: None, clean_redis: None, secret_key: str,
                       start_worker: Callable[..., Worker]) -> None:
    from mailrelay.auth.credentials import forget

    emulator.client.ms_register_app("app-client", "app-secret", MS_TENANT)
    accounts.add("microsoft", "robot@contoso.example", client_id="app-client", tenant=MS_TENANT,
                 client_secret="app-secret", app_only=True)
    forget()
    start_worker("mailrelay.microsoft", concurrency=2)
    assert final(submit(message("robot@contoso.example")).message_id)["state"] == "sent"
    assert len(emulator.client.messages(mailbox="ada@example.org")) == 1


def test_a_20_mb_attachment_goes_through_an_upload_session(
        emulator: EmulatorHandle, ms_account: str, start_worker: Callable[..., Worker]) -> None:
    start_worker("mailrelay.microsoft", concurrency=2)
    big = os.urandom(20 * 1024 * 1024)
    files = [{"filename": "big.bin", "content_type": "application/octet-stream", "content": b64(big)}]
    info = final(submit(message(ms_account, attachments=files)).message_id, timeout=180)
    assert info["state"] == "sent", info
    stats = emulator.client.stats()
    assert 0 < stats["max_chunk_bytes"] <= 4 * 1024 * 1024
    got = emulator.client.messages(mailbox="ada@example.org")
    assert got[0]["attachments"][0]["sha256"] == hashlib.sha256(big).hexdigest()


def test_strict_rotation_over_three_token_lifetimes(
        emulator: EmulatorHandle, ms_account: str, start_worker: Callable[..., Worker]) -> None:
    emulator.client.set_ms_strict_rotation(True)
    emulator.client.set_token_ttl(3)
    start_worker("mailrelay.microsoft", concurrency=2,
                 extra_env={"MAILRELAY_TOKEN_REFRESH_MARGIN": "0"})
    ids = []
    for i in range(30):
        ids.append(submit(message(ms_account, subject=f"rot {i}")).message_id)
        time.sleep(0.35)
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state IN ('sent','failed')") == 30,
             120, "30 finished")
    states = {(outbox.status(i) or {})["state"] for i in ids}
    assert states == {"sent"}
    assert emulator.client.stats()["requests"].get("ms.token", 0) >= 3  # three lifetimes at least
    assert accounts.credentials(ms_account).state == "active"


def test_twenty_parallel_sends_never_pass_four_at_once(
        emulator: EmulatorHandle, ms_account: str, start_worker: Callable[..., Worker]) -> None:
    emulator.client.inject(endpoint="graph.sendmail", latency_ms=400)
    start_worker("mailrelay.microsoft", concurrency=6)
    start_worker("mailrelay.microsoft", concurrency=6)
    ids = [submit(message(ms_account, subject=f"p{i}")).message_id for i in range(20)]
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == 20, 120, "20 sent")
    stats = emulator.client.stats()
    assert max(stats["max_concurrency_by_mailbox"].values()) <= 4
    assert len(emulator.client.messages(mailbox="ada@example.org")) == 20
    assert all(len((outbox.status(i) or {})["attempts"]) == 1 for i in ids)


def test_429_with_retry_after_2_delays_the_retry(
        emulator: EmulatorHandle, ms_account: str, start_worker: Callable[..., Worker]) -> None:
    start_worker("mailrelay.microsoft", concurrency=2)
    emulator.client.inject(endpoint="graph.sendmail", status=429, count=1, retry_after=2)
    info = final(submit(message(ms_account)).message_id)
    assert info["state"] == "sent"
    first, second = info["attempts"]
    assert first["error_code"] == "rate_limited"
    gap = dt.datetime.fromisoformat(second["started_at"]) - dt.datetime.fromisoformat(first["finished_at"])
    assert gap >= dt.timedelta(seconds=2)


def test_a_non_x_header_is_rejected_at_intake(ms_account: str) -> None:
    result = submit(message(ms_account, headers={"List-Unsubscribe": "<mailto:u@example.org>"}))
    assert (result.state, result.error_code) == ("rejected", "invalid_header")


def test_a_worker_killed_right_after_a_refresh_keeps_the_rotated_token(
        emulator: EmulatorHandle, ms_account: str, start_worker: Callable[..., Worker]) -> None:
    import signal

    from mailrelay.auth.tokens import manager

    emulator.client.set_ms_strict_rotation(True)
    emulator.client.inject(endpoint="graph.sendmail", latency_ms=5000)
    worker = start_worker("mailrelay.microsoft", concurrency=1)
    submit(message(ms_account, subject="in flight"))
    wait_for(lambda: emulator.client.stats()["requests"].get("ms.token", 0) == 1, 30, "a refresh")
    time.sleep(0.5)  # the send has started; the rotated refresh token is what must survive
    os.killpg(worker.process.pid, signal.SIGKILL)
    emulator.client.reset()  # latency off; grants and the strict mode stay
    manager().forget(accounts.credentials(ms_account).id)  # force the next worker to refresh
    start_worker("mailrelay.microsoft", concurrency=1)
    info = final(submit(message(ms_account, subject="after the crash")).message_id)
    assert (info["state"], info["error_code"]) == ("sent", None)
    assert emulator.client.stats()["requests"].get("ms.token") == 1  # refreshed with the new one
    assert accounts.credentials(ms_account).state == "active"


def test_a_failed_chunk_is_resumed_not_restarted(
        emulator: EmulatorHandle, ms_account: str, start_worker: Callable[..., Worker]) -> None:
    start_worker("mailrelay.microsoft", concurrency=1)
    emulator.client.inject(endpoint="graph.upload_chunk", status=503, count=1)
    big = os.urandom(10 * 1024 * 1024)
    files = [{"filename": "big.bin", "content_type": "application/octet-stream", "content": b64(big)}]
    info = final(submit(message(ms_account, attachments=files)).message_id, timeout=120)
    assert info["state"] == "sent" and len(info["attempts"]) == 1
    requests = emulator.client.stats()["requests"]
    assert requests.get("graph.create") == 1 and requests.get("graph.upload_session") == 1
    chunks = -(-len(big) // (10 * 320 * 1024))
    assert requests.get("graph.upload_chunk") == chunks + 1  # only the failed one again
    got = emulator.client.messages(mailbox="ada@example.org")
    assert got[0]["attachments"][0]["sha256"] == hashlib.sha256(big).hexdigest()
