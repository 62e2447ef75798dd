"""The reconciler brings back what no task would pick up: lost tasks, parked retries,
dead leases; each message is still sent exactly once."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Callable

import pytest
import redis

from mailrelay.client import submit
from mailrelay.config import get_settings
from mailrelay.providers.sink import inject_fault
from mailrelay.reconcile import reconcile
from mailrelay.store import outbox
from mailrelay.tasks.routing import enqueue_delivery
from tests.integration.helpers import final, query, scalar, wait_for
from tests.processes import Worker

pytestmark = pytest.mark.integration


def message(i: int) -> dict[str, object]:
    return {"from": "sender@example.com", "to": [f"r{i}@example.org"], "subject": f"m{i}", "text": "t"}


def later() -> dt.datetime:
    """A reconciler run as if the window had passed (the claim itself uses the real clock)."""
    return outbox.utcnow() + dt.timedelta(seconds=get_settings().reconcile_after + 1)


def test_messages_whose_tasks_redis_lost_are_sent_once(
        sink_account: str, clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    ids = [submit(message(i)).message_id for i in range(30)]  # no worker yet: tasks wait in Redis
    redis.Redis.from_url(os.environ["MAILRELAY_BROKER_URL"]).flushdb()  # Redis restarted empty
    start_worker("mailrelay.sink", concurrency=4)
    time.sleep(1)
    assert scalar("SELECT count(*) FROM messages WHERE state = 'queued'") == 30
    assert reconcile(enqueue_delivery, now=later()) == 30
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == 30, 60, "30 sent")
    assert scalar("SELECT count(*) FROM sink_deliveries") == 30
    assert reconcile(enqueue_delivery, now=later()) == 0  # nothing left
    for mid in ids:
        # The worker may claim before the reconciler writes its own row: order is not fixed.
        actions = [h["action"] for h in (outbox.status(mid) or {})["history"]]
        assert sorted(actions) == ["claim", "finish", "intake", "reconcile"]
        assert actions.index("intake") < actions.index("claim") < actions.index("finish")


def test_a_retry_parked_beyond_the_countdown_bound_is_picked_up(
        sink_account: str, clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    start_worker("mailrelay.sink", concurrency=2, extra_env={"MAILRELAY_COUNTDOWN_MAX": "1"})
    inject_fault("rate_limited", retry_after=3)  # 3 s > the 1 s bound: parked in the database
    mid = submit(message(1)).message_id
    wait_for(lambda: (outbox.status(mid) or {}).get("state") == "retrying", 30, "retrying")
    time.sleep(3.5)
    assert (outbox.status(mid) or {})["state"] == "retrying"  # no task is coming for it
    assert reconcile(enqueue_delivery, now=later()) == 1
    info = final(mid)
    assert info["state"] == "sent" and [a["outcome"] for a in info["attempts"]] == ["retry", "sent"]


def test_a_worker_killed_mid_send_is_recovered_after_its_lease(
        sink_account: str, clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    env = {"MAILRELAY_LEASE_SECONDS": "12", "MAILRELAY_PROVIDER_TIMEOUT": "1",
           "MAILRELAY_SINK_LATENCY_MS": "4000"}
    worker = start_worker("mailrelay.sink", concurrency=1, extra_env=env)
    mid = submit(message(1)).message_id
    wait_for(lambda: (outbox.status(mid) or {}).get("state") == "sending", 30, "sending")
    for child in worker.children():
        os.kill(child, signal.SIGKILL)  # the pool child dies inside the provider call
    time.sleep(13)  # the lease runs out; the requeued task found it leased and let it be
    assert (outbox.status(mid) or {})["state"] == "sending"
    assert reconcile(enqueue_delivery, now=later()) == 1
    info = final(mid, timeout=60)
    assert info["state"] == "sent"
    assert [a["outcome"] for a in info["attempts"]] == ["unknown", "sent"]
    assert scalar("SELECT count(*) FROM sink_deliveries") == 1
    assert query("SELECT action FROM audit WHERE message_id = :m AND action = 'reconcile'", m=mid)
