"""RabbitMQ as the broker, checked on the real server (the RabbitMQ pass of the suite):
quorum queues declared with their limit and dead-letter queue, nothing classic created on
the fly, a task over its delivery limit kept for on-call, countdowns waiting in the broker
rather than in a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests import services
from tests.integration.helpers import wait_for
from tests.processes import Worker

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.rabbitmq_only]


def broker_queues_now() -> dict[str, dict[str, Any]]:
    out = services.rabbitmqctl("list_queues", "-p", services.VHOST, "name", "type", "arguments",
                               "messages", "--formatter", "json")
    # Each argument comes as [name, AMQP type, value].
    return {queue["name"]: {**queue, "arguments": {name: value for name, _, value in queue["arguments"]}}
            for queue in json.loads(out)}


def test_every_queue_is_a_quorum_queue_with_a_limit_and_a_dead_letter_queue(
        clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    from mailrelay.broker_queues import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE
    from mailrelay.celery_app import CONTROL_QUEUE, queue_names
    from mailrelay.config import get_settings

    start_worker(",".join(queue_names()), concurrency=1)
    found = broker_queues_now()
    for name in queue_names():
        assert found[name]["type"] == "quorum", found[name]
        arguments = found[name]["arguments"]
        assert arguments["x-delivery-limit"] == get_settings().delivery_limit
        if name == CONTROL_QUEUE:  # beat's jobs expire: they must not land in mailrelay.dead
            assert "x-dead-letter-exchange" not in arguments
        else:
            assert arguments["x-dead-letter-exchange"] == DEAD_LETTER_EXCHANGE
    assert found[DEAD_LETTER_QUEUE]["type"] == "quorum"
    assert "x-delivery-limit" not in found[DEAD_LETTER_QUEUE]["arguments"]
    # Nothing of mailrelay's, nor Celery's default queue, was created as a classic queue;
    # native delayed delivery's queues are quorum queues too.
    classic = [name for name, queue in found.items()
               if queue["type"] == "classic" and not name.startswith(("celeryev.", "celery@"))]
    assert classic == [] or all(".pidbox" in name for name in classic), classic
    assert any(name.startswith("celery_delayed_") for name in found)


def test_a_task_over_its_delivery_limit_waits_in_mailrelay_dead_until_put_back(
        clean_redis: None) -> None:
    from mailrelay import broker_queues
    from mailrelay.celery_app import DELIVER_TASK, app

    # A queue declared exactly as mailrelay's are, with a limit of 2; the task is handed
    # out and given back (as a killed pool child's task is) until RabbitMQ stops.
    probe = broker_queues.declared("mailrelay.limit-probe", amqp=True, delivery_limit=2)
    with app.connection_for_write() as connection:
        broker_queues.declare_dead_letters(connection)
        dead = broker_queues.dead_letter_queue()(connection.default_channel)
        dead.purge()
        queue = probe(connection.default_channel)
        queue.declare()
        try:
            app.send_task(DELIVER_TASK, kwargs={"message_id": "m-dead"}, queue=probe,
                          task_id="t-dead")
            deliveries = 0
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                message = queue.get(no_ack=False)
                if message is None:
                    if dead.get(no_ack=False) is not None:
                        break
                    time.sleep(0.1)
                    continue
                deliveries += 1
                message.reject(requeue=True)
            else:
                raise AssertionError("the task never reached mailrelay.dead")
            assert deliveries == 3  # the first delivery and 2 redeliveries, then dead-lettered
            connection.default_channel.basic_recover(requeue=True)  # the peeked one back

            # On-call sees it, without content, and puts it back where it died.
            listed = cli("queues", "dead", "--json")
            assert listed == [{"task": DELIVER_TASK, "task_id": "t-dead", "queue": queue.name,
                               "reason": "delivery_limit", "message_id": "m-dead"}]
            assert cli("queues", "requeue-dead", "--dry-run", "--json")["moved"] == listed
            assert cli("queues", "requeue-dead", "--yes", "--json")["moved"] == listed
            assert cli("queues", "dead", "--json") == []
            back = queue.get(no_ack=True)
            assert back is not None and back.headers["id"] == "t-dead"
            assert back.payload[1] == {"message_id": "m-dead"}
        finally:
            queue.delete()


def cli(*args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "mailrelay.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_countdowns_wait_in_the_broker_in_whole_seconds(
        clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    from mailrelay.celery_app import DELIVER_TASK, app
    from mailrelay.tasks.routing import enqueue_delivery

    worker = start_worker("mailrelay.sink", concurrency=1)

    def log() -> str:
        return worker.log_path.read_text(errors="replace")

    started = time.monotonic()
    # An id of no message: the task only has to arrive (it logs and ends).
    later = app.send_task(DELIVER_TASK, kwargs={"message_id": "no-such-message"},
                          queue="mailrelay.sink", countdown=3).id
    # Under 1 s: Celery refuses it on RabbitMQ unless rounded up, as mailrelay does.
    enqueue_delivery("no-such-message-soon", "sink", countdown=0.3)
    time.sleep(1.5)
    # A worker holding the task until its ETA would have logged it as received at once;
    # RabbitMQ's delay queues hand it over only when it is due.
    assert later not in log()
    wait_for(lambda: later in log() and "no-such-message-soon" in log(), 30,
             "both countdowns' tasks")
    assert time.monotonic() - started >= 2.9
    assert "direct exchange" not in log().lower(), log()[-3000:]
    assert "Failed to setup delayed delivery" not in log()
    assert os.environ["MAILRELAY_BROKER_URL"].startswith("amqp://")
