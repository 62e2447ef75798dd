"""On-call's own commands against real workers, Redis and PostgreSQL: `mailrelay reconcile`
brings back tasks Redis lost (its dry run changes nothing), and `mailrelay queues pause`
holds a provider's messages without losing them until `queues resume`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from sqlalchemy import text

from mailrelay.client import submit
from mailrelay.store.db import get_engine
from tests.integration.helpers import scalar, wait_for
from tests.processes import Worker

pytestmark = pytest.mark.integration


def mailrelay(*args: str) -> tuple[int, Any]:
    done = subprocess.run([sys.executable, "-m", "mailrelay.cli", *args, "--json"],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else done.stderr


def message(i: int) -> dict[str, object]:
    return {"from": "sender@example.com", "to": [f"r{i}@example.org"], "subject": f"m{i}", "text": "t"}


def _sent() -> int:
    return int(scalar("SELECT count(*) FROM messages WHERE state = 'sent'"))


def test_reconcile_by_hand_brings_back_what_redis_lost(
        sink_account: str, clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    ids = [submit(message(i)).message_id for i in range(12)]  # no worker: tasks wait in Redis
    redis.Redis.from_url(os.environ["MAILRELAY_BROKER_URL"]).flushdb()  # Redis restarted empty
    # As if MAILRELAY_RECONCILE_AFTER had passed since intake.
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE messages SET updated_at = updated_at - interval '1 hour'"))
    before = scalar("SELECT max(updated_at) FROM messages")

    code, planned = mailrelay("reconcile", "--dry-run")
    assert code == 0 and planned["would_enqueue"] == 12 and planned["by_state"] == {"queued": 12}
    assert sorted(planned["ids"]) == sorted(ids)
    assert scalar("SELECT max(updated_at) FROM messages") == before  # the dry run changed nothing

    start_worker("mailrelay.sink", concurrency=4)
    code, done = mailrelay("reconcile")
    assert (code, done) == (0, {"dry_run": False, "enqueued": 12, "notifications_published": 0})
    wait_for(lambda: _sent() == 12, 60, "every lost message sent")
    assert scalar("SELECT count(*) FROM sink_deliveries") == 12  # each once
    assert mailrelay("reconcile", "--dry-run")[1]["would_enqueue"] == 0


@pytest.mark.rabbitmq  # on-call commands work the same on both brokers
def test_a_paused_queue_holds_its_messages_until_resumed(
        sink_account: str, clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker("mailrelay.sink", concurrency=2)
    code, shown = mailrelay("queues", "list")
    assert code == 0
    sink = next(row for row in shown if row["queue"] == "mailrelay.sink")
    assert sink["consumers"] == 1 and sink["paused_workers"] == []

    assert mailrelay("queues", "resume", "sink")[0] == 3  # not paused
    code, planned = mailrelay("queues", "pause", "sink", "--reason", "test", "--dry-run")
    assert (code, planned["workers"], planned["dry_run"]) == (0, [worker.name], True)
    assert mailrelay("queues", "list")[1][-1]["paused_workers"] == []  # the dry run did nothing

    code, paused = mailrelay("queues", "pause", "sink", "--reason", "INC-1: stop sink")
    assert (code, paused["workers"]) == (0, [worker.name])
    ids = [submit(message(i)).message_id for i in range(5)]
    time.sleep(3)
    assert _sent() == 0  # held: the tasks wait in the broker
    code, shown = mailrelay("queues", "list")
    sink = next(row for row in shown if row["queue"] == "mailrelay.sink")
    assert (sink["length"], sink["consumers"], sink["paused_workers"]) == (5, 0, [worker.name])

    code, resumed = mailrelay("queues", "resume", "sink")
    assert (code, resumed["workers"]) == (0, [worker.name])
    wait_for(lambda: _sent() == len(ids), 30, "the held messages sent after resume")
    assert scalar("SELECT count(*) FROM sink_deliveries") == len(ids)
    assert mailrelay("queues", "resume", "sink")[0] == 3  # the pause is gone
