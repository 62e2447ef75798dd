"""Publishing outcome notifications on the real broker of the run: what the producer's
queue receives, what a failed publish leaves behind, and a reconciler run that stops
when the broker is away."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from mailrelay import intake, notify
from mailrelay.notify import BROKER_UNAVAILABLE, PublishError
from mailrelay.store import notifications, outbox
from mailrelay.store.notifications import Pending
from mailrelay.store.outbox import Outcome
from mailrelay.store.states import State
from mailrelay.tasks.outcomes import publish_outcome, task_id
from tests import services

pytestmark = pytest.mark.rabbitmq  # the publish is broker-specific (mandatory, confirms)

NOTIFY = {"task": "billing.mail_outcome", "queue": "billing.unit-events"}


def _sent_with_notify(sender: str, n: int = 0) -> Pending:
    result = intake.take_in({"from": sender, "to": ["ada@example.org"], "subject": "secret",
                             "text": "secret words", "metadata": {"order": n}, "notify": NOTIFY},
                            request_id=None, actor="t").result
    claim = outbox.claim(result.message_id, worker="w", lease_seconds=60)
    assert claim is not None
    done = outbox.finish(claim, Outcome(State.SENT, provider_message_id=f"p{n}"), latency_ms=1)
    assert done.notification is not None
    return done.notification


def _count(result: str, code: str = "") -> float:
    return REGISTRY.get_sample_value("mailrelay_notifications_total",
                                     {"result": result, "code": code}) or 0.0


@pytest.mark.skipif(services.BROKER != "redis", reason="reads the Redis broker's list")
def test_the_producers_queue_gets_the_task_with_ids_and_metadata_only(sink_account: str) -> None:
    broker = redis.Redis.from_url(os.environ["MAILRELAY_BROKER_URL"])
    broker.delete(NOTIFY["queue"])
    pending = _sent_with_notify(sink_account, 7)
    published = _count("published")
    assert notify.publish(pending, publish_outcome) is True
    assert _count("published") == published + 1
    raw = broker.lpop(NOTIFY["queue"])
    assert raw is not None and broker.llen(NOTIFY["queue"]) == 0
    envelope = json.loads(raw)
    headers = envelope["headers"]
    assert headers["task"] == "billing.mail_outcome"
    assert headers["id"] == task_id(pending.kwargs) == str(uuid.uuid5(
        uuid.UUID("6f1d9a52-3c1e-4d8b-9f57-2a0c5e7b8d41"), f"{pending.message_id}:sent:0"))
    args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    assert args == [] and kwargs == pending.kwargs and kwargs["metadata"] == {"order": 7}
    # The headers Flower and `celery events` show carry ids only.
    assert "order" not in headers["kwargsrepr"] and pending.message_id in headers["kwargsrepr"]
    text = raw.decode()
    assert sink_account not in text and "ada@example.org" not in text and "secret" not in text
    assert notifications.pending() == []


def test_a_failed_publish_leaves_it_pending_with_its_code_and_a_later_try(
        sink_account: str) -> None:
    pending = _sent_with_notify(sink_account)
    before = _count("failed", BROKER_UNAVAILABLE)

    def away(_: Pending) -> None:
        raise PublishError(BROKER_UNAVAILABLE, "ConnectionRefusedError")

    assert notify.publish(pending, away) is False
    assert _count("failed", BROKER_UNAVAILABLE) == before + 1
    [row] = notifications.pending()
    assert (row["tries"], row["last_error"]) == (1, BROKER_UNAVAILABLE)
    # Not due before MAILRELAY_NOTIFY_RETRY_AFTER: the reconciler leaves it for now.
    assert notifications.take_due(limit=10, hold=30) == []
    assert notify.publish(None, away) is True  # nothing to tell


def test_a_reconciler_run_stops_at_the_first_broker_failure_and_publishes_the_rest_later(
        sink_account: str) -> None:
    for n in range(5):
        _sent_with_notify(sink_account, n)
    notifications.make_due()
    tried: list[int] = []

    def away(pending: Pending) -> None:
        tried.append(pending.id)
        raise PublishError(BROKER_UNAVAILABLE)

    assert notify.republish_due(away) == 0
    assert len(tried) == 1  # not five attempts against a broker that is away
    notifications.make_due()
    sent: list[dict[str, Any]] = []
    assert notify.republish_due(lambda p: sent.append(p.kwargs)) == 5
    assert sorted(k["metadata"]["order"] for k in sent) == [0, 1, 2, 3, 4]
    assert notifications.pending() == []


UNREACHABLE = """
import sys, time
from mailrelay.notify import PublishError
from mailrelay.store.notifications import Pending
from mailrelay.tasks.outcomes import publish_outcome
kwargs = {"id": "m", "state": "sent", "replays": 0}
started = time.monotonic()
try:
    publish_outcome(Pending(1, "m", "billing.mail_outcome", "billing.events", kwargs))
except PublishError as err:
    print(err.code, round(time.monotonic() - started, 1))
"""


def _publish_to(port: int) -> tuple[str, float]:
    scheme = "amqp://guest:guest@" if services.BROKER == "rabbitmq" else "redis://"
    env = {**os.environ, "MAILRELAY_BROKER_URL": f"{scheme}127.0.0.1:{port}/0"}
    done = subprocess.run([sys.executable, "-c", UNREACHABLE], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    code, seconds = done.stdout.split()
    return code, float(seconds)


def test_an_unreachable_broker_is_broker_unavailable_in_bounded_time() -> None:
    from mailrelay.devstack import free_port

    code, seconds = _publish_to(free_port())
    assert code == BROKER_UNAVAILABLE and seconds < 30


def test_a_broker_that_accepts_and_never_answers_does_not_hold_the_publish() -> None:
    """What a frozen broker or a dead NAT entry looks like: the connection opens and
    nothing ever comes back. The publish gives up (socket timeout, one retry)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshakes; nobody reads or answers
    try:
        code, seconds = _publish_to(silent.getsockname()[1])
    finally:
        silent.close()
    assert code == BROKER_UNAVAILABLE and seconds < 60
