"""Producers hear how each message ended: a producer service of its own (the README's
example, a Celery app that does not import mailrelay, consuming ``billing.events``) sends
through real workers and receives one outcome task per final state, whatever crashes and
restarts happen in between."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests import services
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import Reconciler, assert_each_received_once, query, scalar, wait_for
from tests.integration.test_guarantees import PrivateRedis, private_redis  # noqa: F401 (fixture)
from tests.processes import ROOT, Worker, terminate_group

RECIPIENT = "ada@example.org"
BOUNCING = "bounce@example.com"
NOTIFY = {"task": "billing.mail_outcome", "queue": "billing.events"}
KWARGS = {"id", "state", "error_code", "provider", "provider_message_id", "rfc822_message_id",
          "attempts", "metadata", "replays", "request_id"}


class Billing:
    """The producer service: its worker (consuming billing.events) and its sender."""

    def __init__(self, broker_url: str, tmp_path: Path) -> None:
        self.env = {**os.environ, "BILLING_BROKER_URL": broker_url,
                    "BILLING_OUTCOMES": str(tmp_path / "outcomes.jsonl")}
        self.outcomes_path = Path(self.env["BILLING_OUTCOMES"])
        self.log_path = tmp_path / "billing-worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.integration.billing_service", "worker",
             "-Q", "billing.events", "-P", "solo", "-n", f"billing-{time.monotonic_ns()}@localhost",
             "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: b" ready." in self.log_path.read_bytes(), 60, "the billing worker")

    def stop(self) -> None:
        if self.process is not None:
            terminate_group(self.process, 10)
            self.process = None

    def send(self, messages: list[dict[str, Any]]) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "tests.integration.billing_service"],
                              input=json.dumps(messages).encode(), env=self.env, cwd=ROOT,
                              capture_output=True, check=True, timeout=120)
        return list(json.loads(done.stdout))

    def received(self) -> list[dict[str, Any]]:
        if not self.outcomes_path.exists():
            return []
        return [json.loads(line) for line in self.outcomes_path.read_text().splitlines()]


@pytest.fixture
def billing(tmp_path: Path) -> Iterator[Callable[[str], Billing]]:
    started: list[Billing] = []

    def start(broker_url: str) -> Billing:
        service = Billing(broker_url, tmp_path)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
    if started and services.BROKER == "rabbitmq":
        # The producer's worker declared a classic queue in the run's vhost: other tests
        # check that the vhost holds mailrelay's quorum queues only.
        _delete_queue("billing.events")


def _delete_queue(name: str) -> None:
    from mailrelay.celery_app import app

    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(name)


def _grant(emulator: EmulatorHandle, address: str) -> None:
    from mailrelay.auth import accounts
    from mailrelay.auth.credentials import forget

    refresh = emulator.client.grant("mailrelay-client", address)
    accounts.add("gmail", address, client_id="mailrelay-client", client_secret="client-secret",
                 refresh_token=refresh, rate_limit_per_minute=100_000)
    forget()


def _message(sender: str, n: int) -> dict[str, Any]:
    return {"from": sender, "to": [RECIPIENT], "subject": f"invoice {n}", "text": f"body {n}",
            "metadata": {"invoice": n}, "notify": NOTIFY}


def _replay(code: str) -> dict[str, Any]:
    from mailrelay.cli import cli

    result = CliRunner().invoke(cli, ["replay", "--code", code, "--reason", "test", "--yes",
                                      "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


@pytest.mark.rabbitmq
def test_a_producer_hears_each_outcome_once_and_once_more_per_replay(
        emulator: EmulatorHandle, gmail_account: str, start_worker: Callable[..., Worker],
        billing: Callable[[str], Billing]) -> None:
    _grant(emulator, BOUNCING)
    # The bouncing mailbox's sends fail for good (a 400 is the provider's refusal).
    emulator.client.inject(endpoint="gmail.send", status=400, reason="badRequest", mailbox=BOUNCING)
    service = billing(os.environ["MAILRELAY_BROKER_URL"])
    start_worker("mailrelay.intake,mailrelay.gmail", concurrency=4)
    messages = [_message(BOUNCING if n % 5 == 0 else gmail_account, n) for n in range(100)]
    requests = service.send(messages)

    wait_for(lambda: len(service.received()) >= 100, 180, "100 outcomes")
    time.sleep(1)  # a duplicate would come right behind
    first = service.received()
    ids = dict(query("SELECT request_id, id FROM messages"))
    assert len(ids) == 100
    by_id = {line["kwargs"]["id"]: line for line in first}
    assert len(first) == 100 and set(by_id) == {ids[r] for r in requests}
    for n, request in enumerate(requests):
        outcome = by_id[ids[request]]["kwargs"]
        assert set(outcome) == KWARGS
        assert outcome["metadata"] == {"invoice": n} and outcome["replays"] == 0
        assert outcome["request_id"] == request  # the id send_task gave the producer
        if n % 5 == 0:
            assert (outcome["state"], outcome["error_code"]) == ("failed", "provider_rejected")
            assert outcome["provider_message_id"] is None
        else:
            assert (outcome["state"], outcome["error_code"]) == ("sent", None)
            assert outcome["provider_message_id"] and outcome["rfc822_message_id"]
            assert outcome["attempts"] == 1
    text = json.dumps(first)
    assert RECIPIENT not in text and BOUNCING not in text and "body 1" not in text
    assert not any(line["mailrelay_imported"] for line in first)
    assert scalar("SELECT count(*) FROM notifications WHERE state = 'pending'") == 0

    # The provider takes the bouncing mailbox's mail again; on-call replays the failures.
    emulator.client.clear_faults()
    assert _replay("provider_rejected")["replayed"] == 20
    wait_for(lambda: len(service.received()) >= 120, 120, "20 more outcomes")
    time.sleep(1)
    every = service.received()
    assert len(every) == 120
    again = [line["kwargs"] for line in every[100:]]
    assert {o["id"] for o in again} == {o["kwargs"]["id"] for o in first
                                        if o["kwargs"]["state"] == "failed"}
    assert {(o["state"], o["replays"], o["error_code"]) for o in again} == {("sent", 1, None)}
    # What producers deduplicate on tells every outcome apart, and so does the task id.
    assert len({(o["kwargs"]["id"], o["kwargs"]["state"], o["kwargs"]["replays"])
                for o in every}) == 120
    assert len({o["task_id"] for o in every}) == 120
    assert_each_received_once(emulator, list(ids.values()), RECIPIENT)


@pytest.mark.rabbitmq_only
def test_a_queue_nobody_declared_keeps_the_outcome_pending_until_it_exists(
        emulator: EmulatorHandle, gmail_account: str, start_worker: Callable[..., Worker],
        fast_settings: dict[str, str], billing: Callable[[str], Billing]) -> None:
    """RabbitMQ drops what no queue takes; mailrelay's publish is mandatory, so the
    outcome stays pending (queue_not_found) instead of being lost."""
    from mailrelay.client import submit

    _delete_queue("billing.events")  # whatever an earlier test left
    env = {**fast_settings, "MAILRELAY_NOTIFY_RETRY_AFTER": "1"}
    start_worker("mailrelay.gmail", concurrency=2, extra_env=env)
    ids = [submit(_message(gmail_account, n)).message_id for n in range(5)]
    wait_for(lambda: scalar("SELECT count(*) FROM notifications WHERE last_error = "
                            "'queue_not_found'") == 5, 60, "five refused publishes")
    assert scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == 5
    service = billing(os.environ["MAILRELAY_BROKER_URL"])  # declares billing.events
    with Reconciler(env=env):
        wait_for(lambda: len(service.received()) >= 5, 60, "the outcomes, once the queue exists")
    assert sorted(line["kwargs"]["id"] for line in service.received()) == sorted(ids)
    assert scalar("SELECT count(*) FROM notifications WHERE state = 'pending'") == 0


SUBMIT = """
import json, sys
from mailrelay.client import submit
for message in json.load(sys.stdin):
    assert submit(message).state == "queued"
"""


@pytest.mark.skipif(services.BROKER != "redis", reason="freezes and empties the Redis broker")
def test_killed_between_the_final_state_and_the_publish_and_redis_emptied(
        emulator: EmulatorHandle, gmail_account: str, fast_settings: dict[str, str],
        private_redis: PrivateRedis, start_worker: Callable[..., Worker],  # noqa: F811
        billing: Callable[[str], Billing]) -> None:
    """Redis (the broker) freezes while sends are in flight: each send that ends commits its
    final state and its notification, then hangs in the publish. The worker is SIGKILLed
    there, and Redis comes back empty (every queued task, and nothing published, gone).
    Every outcome still reaches the producer: the reconciler publishes what is pending."""
    env = {**fast_settings, **private_redis.env, "MAILRELAY_NOTIFY_RETRY_AFTER": "2"}
    service = billing(env["MAILRELAY_BROKER_URL"])
    emulator.client.inject(endpoint="gmail.send", latency_ms=300)
    worker = start_worker("mailrelay.gmail", concurrency=4, extra_env=env)
    messages = [_message(gmail_account, n) for n in range(40)]
    subprocess.run([sys.executable, "-c", SUBMIT], input=json.dumps(messages).encode(),
                   env={**os.environ, **env}, cwd=ROOT, check=True, timeout=120)
    wait_for(lambda: len(service.received()) >= 4, 60, "the first outcomes")

    assert private_redis.process is not None
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    pending = "SELECT count(*) FROM notifications WHERE state = 'pending'"
    wait_for(lambda: scalar(pending) >= 2, 30, "sends that ended while the broker was frozen")
    os.killpg(worker.process.pid, signal.SIGKILL)
    stranded = int(scalar(pending))
    private_redis.restart_empty()
    service.stop()
    assert scalar("SELECT count(*) FROM messages WHERE state = 'sent'") < 40, "too late"

    service = billing(env["MAILRELAY_BROKER_URL"])
    start_worker("mailrelay.gmail", concurrency=4, extra_env=env)
    with Reconciler(env=env):
        wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == 40, 180,
                 "all 40 sent")
        wait_for(lambda: scalar(pending) == 0, 60, "every notification published")
    ids = [row[0] for row in query("SELECT id FROM messages")]
    assert_each_received_once(emulator, ids, RECIPIENT)
    # Outcomes of both lives of the producer's worker: the first received some, the second
    # (after the restart) the rest, the stranded ones among them. At least once: a repeat
    # is possible, a loss is not.
    heard = collections.Counter(line["kwargs"]["id"] for line in service.received())
    assert set(heard) == set(ids)
    assert all(line["kwargs"]["state"] == "sent" for line in service.received())
    assert stranded >= 2
