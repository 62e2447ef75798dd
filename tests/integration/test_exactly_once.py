"""Exactly once where real providers and real workers are unkind (issue 12): a send longer
than its lease, and sends the provider took but whose answers were lost while its lookups
lag behind. Real workers, PostgreSQL, Redis and the emulator with its faults."""

from __future__ import annotations

import base64
import collections
import os
from collections.abc import Callable
from typing import Any

import pytest

from mailrelay.client import submit
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import Reconciler, final, query
from tests.processes import Worker

pytestmark = pytest.mark.integration

RECIPIENT = "ada@example.org"


def message(sender: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"from": sender, "to": [RECIPIENT], "subject": f"once {n}", "text": f"body {n}", **extra}


def received(emulator: EmulatorHandle) -> collections.Counter[str]:
    return collections.Counter(m["message_id"] for m in emulator.client.messages(mailbox=RECIPIENT))


def test_a_graph_upload_longer_than_its_lease_is_delivered_once(
        emulator: EmulatorHandle, ms_account: str, start_worker: Callable[..., Worker]) -> None:
    """Five upload chunks of 4 s each: 20 s of sending against a 15 s lease, with a
    second worker and the reconciler ready to take over an expired lease. The lease is
    renewed while the upload runs, so nobody does, and the message arrives once."""
    env = {"MAILRELAY_LEASE_SECONDS": "15", "MAILRELAY_PROVIDER_TIMEOUT": "5",
           "MAILRELAY_RECONCILE_AFTER": "10", "MAILRELAY_VERIFY_SETTLE_SECONDS": "1",
           "MAILRELAY_VERIFY_RECHECK_SECONDS": "1"}
    start_worker("mailrelay.microsoft", concurrency=1, extra_env=env)
    start_worker("mailrelay.microsoft", concurrency=1, extra_env=env)
    emulator.client.inject(endpoint="graph.upload_chunk", latency_ms=4000)
    big = os.urandom(16 * 1024 * 1024)  # five chunks of at most 3.2 MiB
    files = [{"filename": "big.bin", "content_type": "application/octet-stream",
              "content": base64.b64encode(big).decode()}]
    with Reconciler(every=1.0, env=env):
        info = final(submit(message(ms_account, 1, attachments=files)).message_id, timeout=150)
    assert info["state"] == "sent", info
    assert [a["outcome"] for a in info["attempts"]] == ["sent"]  # never taken over
    assert emulator.client.stats()["requests"].get("graph.send_draft") == 1
    assert list(received(emulator).values()) == [1]


@pytest.mark.parametrize(("provider", "endpoint"), [("gmail", "gmail.send"),
                                                    ("microsoft", "graph.sendmail")])
def test_sends_taken_but_unanswered_under_lookup_lag_are_delivered_once(
        provider: str, endpoint: str, emulator: EmulatorHandle, request: pytest.FixtureRequest,
        start_worker: Callable[..., Worker]) -> None:
    """The provider takes each message and the answer is lost; its lookups show a sent
    message only 6 s later. Asking at once would miss it and send it again: mailrelay
    asks after the settle time, and twice, and each message arrives once."""
    sender = request.getfixturevalue("gmail_account" if provider == "gmail" else "ms_account")
    env = {"MAILRELAY_VERIFY_SETTLE_SECONDS": "8", "MAILRELAY_VERIFY_RECHECK_SECONDS": "2",
           "MAILRELAY_PROVIDER_TIMEOUT": "5"}
    start_worker(f"mailrelay.{provider}", concurrency=3, extra_env=env)
    emulator.client.set_index_lag(6)
    emulator.client.inject(endpoint=endpoint, drop=True, after_send=True, count=3)
    ids = [submit(message(sender, n)).message_id for n in range(3)]
    infos = [final(mid, timeout=90) for mid in ids]
    assert [info["state"] for info in infos] == ["sent"] * 3, infos
    for info in infos:  # the second attempt asked the provider and found it: not resent
        assert [a["outcome"] for a in info["attempts"]] == ["retry", "sent"]
        assert "not sent again" in (info["attempts"][-1]["detail"] or "")
    counts = received(emulator)
    assert sorted(counts.values()) == [1, 1, 1], counts
    headers = {row[0] for row in query("SELECT rfc822_message_id FROM messages")}
    assert {h.lower() for h in counts} == {h.lower() for h in headers}
