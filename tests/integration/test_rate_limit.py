"""The per-mailbox rate limit holds across real worker processes: the emulator never sees
more than the token bucket allows in any window, and a held-back send is no attempt."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable

import pytest

from mailrelay import ratelimit
from mailrelay.auth import accounts
from mailrelay.client import submit
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import query, scalar, wait_for
from tests.processes import Worker

pytestmark = pytest.mark.integration

PER_MINUTE = 60
COUNT = 40  # a burst of 10, then one a second: about 30 s


def test_three_workers_never_send_faster_than_the_bucket_allows(
        gmail_account: str, emulator: EmulatorHandle, start_worker: Callable[..., Worker]) -> None:
    accounts.configure(gmail_account, rate_limit_per_minute=PER_MINUTE)
    for _ in range(3):
        start_worker("mailrelay.gmail", concurrency=2)
    ids = [submit({"from": gmail_account, "to": [f"r{n}@example.org"], "subject": f"m{n}",
                   "text": "t"}).message_id for n in range(COUNT)]
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == COUNT, 120,
             f"{COUNT} sent")

    received = [m for m in emulator.client.messages() if m["mailbox"].startswith("r")]
    assert len(received) == COUNT
    assert max(Counter(m["message_id"] for m in received).values()) == 1  # each once
    times = sorted(dt.datetime.fromisoformat(m["received_at"]).timestamp() for m in received)
    burst = ratelimit.burst(PER_MINUTE)
    rate = PER_MINUTE / 60
    # Every window [t_i, t_j] between two receipts holds at most burst + rate * W sends;
    # one more for the jitter between taking a token and the emulator stamping the receipt.
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - start) + 1, (i, j, times[j] - start)
    # The limit did hold messages back, and no wait counted as an attempt.
    assert times[-1] - times[0] >= (COUNT - burst - 1) / rate
    held = scalar("SELECT count(*) FROM audit WHERE action = 'rate_limited'")
    # Waiters come back at turns one interval apart, not all at once at every new token.
    assert COUNT - burst - 1 <= held <= 2 * COUNT
    attempts = dict(query("SELECT message_id, count(*) FROM attempts GROUP BY message_id"))
    assert attempts == dict.fromkeys(ids, 1)
    counts = {row[0] for row in query("SELECT attempt_count FROM messages")}
    assert counts == {1}
