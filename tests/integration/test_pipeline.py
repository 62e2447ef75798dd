"""The walking skeleton end to end: a separate producer, real workers, the broker (Redis,
and RabbitMQ in the second pass), PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import query, scalar, wait_for
from tests.processes import Worker

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

SENDER = "sender@example.com"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(64))).decode()


def valid(i: int) -> dict[str, Any]:
    message: dict[str, Any] = {"from": SENDER, "to": [f"Person {i} <p{i}@example.org>"],
                               "subject": f"message {i}", "text": f"hello {i}"}
    if i % 10 == 0:
        message.update(html=f'<p>hello {i}</p><img src="cid:img{i}@x">',
                       inline=[{"filename": "i.png", "content_type": "image/png", "content": PNG,
                                "cid": f"img{i}@x"}],
                       attachments=[{"filename": "a.bin", "content_type": "application/octet-stream",
                                     "content": base64.b64encode(os.urandom(300)).decode()}])
    return message


BASE = {"from": SENDER, "to": ["ok@example.org"], "subject": "s", "text": "t"}
INVALID: list[tuple[Any, str]] = [
    ({**BASE, "to": []}, "missing_recipient"),
    ({**BASE, "to": ["not-an-address"]}, "invalid_address"),
    ({**BASE, "to": ["a@b"]}, "invalid_address"),
    ({**BASE, "cc": ["x\r\n@example.org"]}, "invalid_address"),
    ({**BASE, "subject": "hi\r\nBcc: victim@example.org"}, "invalid_header"),
    ({**BASE, "headers": {"X-Tag": "a\nb"}}, "invalid_header"),
    ({**BASE, "headers": {"X-Tag": "café"}}, "invalid_header"),
    ({**BASE, "headers": {"Bcc": "victim@example.org"}}, "invalid_header"),
    ({**BASE, "from": "stranger@example.com"}, "unknown_account"),
    ({**BASE, "attachments": [{"filename": "a", "content_type": "text/plain", "content": "!!!"}]},
     "invalid_attachment"),
    ({**BASE, "inline": [{"filename": "a.png", "content_type": "image/png", "content": PNG}]},
     "invalid_attachment"),
    ({**BASE, "text": None}, "missing_body"),
    ({**BASE, "to": [f"r{n}@example.org" for n in range(1001)]}, "too_many_recipients"),
    ({**BASE, "surprise": 1}, "invalid_message"),
    ({**BASE, "to": "ok@example.org"}, "invalid_message"),
    ("just a string", "invalid_message"),
    ([1, 2, 3], "invalid_message"),
    (None, "invalid_message"),
    ({**BASE, "subject": 42}, "invalid_message"),
    ({**BASE, "provider": "gmial"}, "unknown_provider"),
]


def produce(messages: list[Any], *options: str) -> list[str]:
    """Publish from a separate process that never imports mailrelay, with the README's
    producer snippet."""
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("producer.py")),
                          os.environ["MAILRELAY_BROKER_URL"], *options],
                         input=json.dumps(messages), capture_output=True, text=True, timeout=120,
                         check=False, env={k: v for k, v in os.environ.items()
                                           if not k.startswith("MAILRELAY_")})
    assert out.returncode == 0, out.stderr[-3000:]
    ids = json.loads(out.stdout)
    assert len(ids) == len(messages) or options
    return ids


def test_the_readme_producer_snippet_as_printed_reaches_intake(
        clean_db: None, clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    from mailrelay.auth import accounts

    # The snippet's sender, so that what intake says is about the message itself: its
    # attachments carry "<base64>" where the content goes.
    accounts.add("sink", "reports@example.com")
    start_worker("mailrelay.intake", concurrency=1)
    [task_id] = produce([], "--readme")
    wait_for(lambda: query("SELECT state, error_code FROM messages WHERE request_id = :r",
                           r=task_id) == [("rejected", "invalid_attachment")],
             60, "the README's message to reach intake")


def test_200_sent_exactly_once_and_20_rejected_with_codes(
        sink_account: str, clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    assert len(INVALID) == 20
    start_worker("mailrelay.intake", concurrency=2)
    start_worker("mailrelay.sink", concurrency=4)
    task_ids = produce([valid(i) for i in range(200)] + [m for m, _ in INVALID])

    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state IN ('sent', 'rejected')") == 220,
             timeout=180, what="220 messages to reach sent or rejected")

    states = dict(query("SELECT state, count(*) FROM messages GROUP BY state"))
    assert states == {"sent": 200, "rejected": 20}
    # Exactly one sink delivery and one attempt per sent message.
    per_message = query("SELECT m.rfc822_message_id, count(d.id) FROM messages m "
                        "JOIN sink_deliveries d ON d.rfc822_message_id = m.rfc822_message_id "
                        "WHERE m.state = 'sent' GROUP BY m.rfc822_message_id")
    assert len(per_message) == 200 and {count for _, count in per_message} == {1}
    assert scalar("SELECT count(*) FROM sink_deliveries") == 200
    attempts = query("SELECT message_id, count(*), min(outcome) FROM attempts GROUP BY message_id")
    assert len(attempts) == 200 and all(n == 1 and outcome == "sent" for _, n, outcome in attempts)
    # Every request is stored under its task id, the rejected ones with the expected code.
    by_request = {row[0]: row[1:] for row in query("SELECT request_id, state, error_code FROM messages")}
    assert set(by_request) == set(task_ids)
    rejected_codes = Counter(by_request[tid][1] for tid in task_ids[200:])
    assert rejected_codes == Counter(code for _, code in INVALID)
    for tid, (_, code) in zip(task_ids[200:], INVALID, strict=True):
        assert by_request[tid] == ("rejected", code)


def test_duplicate_tasks_send_once(sink_account: str, clean_redis: None,
                                   start_worker: Callable[..., Worker]) -> None:
    from mailrelay.celery_app import SEND_TASK, app
    from mailrelay.client import submit
    from mailrelay.tasks.routing import enqueue_delivery

    start_worker("mailrelay.intake,mailrelay.sink", concurrency=4)
    # The same intake task delivered three times (same task id) is one message.
    for _ in range(3):
        app.send_task(SEND_TASK, kwargs={"message": valid(1)}, queue="mailrelay.intake", task_id="dup-1")
    # One message whose delivery task is published five times is sent once.
    result = submit(valid(2))
    for _ in range(5):
        enqueue_delivery(result.message_id, "sink")
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == 2, 60, "2 sent")
    wait_for(lambda: scalar("SELECT count(*) FROM audit WHERE action = 'intake'") >= 2, 10, "audit")
    assert scalar("SELECT count(*) FROM messages") == 2
    assert scalar("SELECT count(*) FROM sink_deliveries") == 2
    assert scalar("SELECT count(*) FROM attempts") == 2


def test_the_send_task_returns_id_and_state(sink_account: str, clean_redis: None,
                                            start_worker: Callable[..., Worker]) -> None:
    from mailrelay.client import send_async

    start_worker("mailrelay.intake,mailrelay.sink", concurrency=2)
    good = send_async(valid(3)).get(timeout=60)
    bad = send_async({**BASE, "to": ["nope"]}).get(timeout=60)
    assert good["state"] == "queued" and good["error_code"] is None
    assert bad == {"id": bad["id"], "state": "rejected", "error_code": "invalid_address"}
    wait_for(lambda: scalar("SELECT state FROM messages WHERE id = :i", i=good["id"]) == "sent", 60, "sent")
