"""Exactly one email per accepted request, whatever crashes, restarts and outages happen:
real worker processes (killed for real), a real Redis (restarted empty), a real RabbitMQ
(restarted, in the suite's RabbitMQ pass), PostgreSQL, the emulator. The reconciler runs as
beat would run it: `reconcile(enqueue_delivery)`."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import services
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import (
    Outage,
    Reconciler,
    assert_each_received_once,
    query,
    scalar,
    wait_for,
)
from tests.processes import ROOT, Worker

pytestmark = pytest.mark.rabbitmq

SENDER = "sender@example.com"
RECIPIENT = "ada@example.org"


def message(n: int, **extra: Any) -> dict[str, Any]:
    return {"from": SENDER, "to": [RECIPIENT], "subject": f"guarantee {n}", "text": f"body {n}",
            **extra}


def submit_all(count: int) -> list[str]:
    from mailrelay.client import submit

    ids = []
    for n in range(count):
        result = submit(message(n))
        assert result.state == "queued", result
        ids.append(result.message_id)
    return ids


def sent_count() -> int:
    return int(scalar("SELECT count(*) FROM messages WHERE state = 'sent'"))


def test_kill_9_during_delivery(emulator: EmulatorHandle, gmail_account: str, fast_settings: dict[str, str],
                                start_worker: Callable[..., Worker]) -> None:
    # Each send takes 300 ms at the "provider", so most kills land mid-call: the worst case,
    # where the message may or may not have left.
    emulator.client.inject(endpoint="gmail.send", latency_ms=300)
    worker = start_worker("mailrelay.gmail", concurrency=4, extra_env=fast_settings)
    ids = submit_all(200)
    rng = random.Random(20261125)
    kills = 0
    with Reconciler(env=fast_settings):
        while kills < 20:
            time.sleep(rng.uniform(0.2, 0.8))
            children = worker.children()
            if children:
                os.kill(rng.choice(children), signal.SIGKILL)
                kills += 1
        wait_for(lambda: sent_count() == 200, 180, "all 200 sent after 20 kills")
    assert scalar("SELECT count(*) FROM messages WHERE state <> 'sent'") == 0
    assert_each_received_once(emulator, ids, RECIPIENT)
    # The kills left attempts whose outcome was unknown; each was settled by asking first.
    unknown = scalar("SELECT count(*) FROM attempts WHERE outcome = 'unknown'")
    assert unknown >= 1
    assert emulator.client.stats()["requests"].get("gmail.list", 0) >= unknown


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, for results, mailrelay's keys and, unless the run's
    broker is RabbitMQ, the broker."""

    url: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {"MAILRELAY_RESULT_BACKEND": f"{self.url}/1", "MAILRELAY_REDIS_URL": f"{self.url}/2"}
        if services.BROKER == "redis":
            env["MAILRELAY_BROKER_URL"] = f"{self.url}/0"
        return env

    def start(self) -> None:
        from mailrelay.devstack import redis_answers

        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: redis_answers(self.url), 10, "private redis")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def restart_empty(self) -> None:
        """What a Redis restart without persistence does: every queue, token and lock gone."""
        self.stop()
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    from mailrelay.devstack import free_port

    port = free_port()
    server = PrivateRedis(f"redis://127.0.0.1:{port}",
                          ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(tmp_path)])
    server.start()
    yield server
    server.stop()


SUBMIT = """
import sys
from mailrelay.client import submit
for n in range(int(sys.argv[1])):
    result = submit({"from": sys.argv[2], "to": [sys.argv[3]], "subject": f"redis loss {n}",
                     "text": f"body {n}"})
    assert result.state == "queued", result
"""


def sent_once_across_a_restart(emulator: EmulatorHandle, env: dict[str, str],
                               start_worker: Callable[..., Worker], restart: Callable[[], None],
                               what: str) -> Worker:
    """200 sends in flight through a worker with ``env``, ``restart`` after the first 20;
    every message received exactly once in the end (the reconciler running as beat would)."""
    emulator.client.inject(endpoint="gmail.send", latency_ms=100)
    worker = start_worker("mailrelay.gmail", concurrency=4, extra_env=env)
    subprocess.run([sys.executable, "-c", SUBMIT, "200", SENDER, RECIPIENT], env={**os.environ, **env},
                   cwd=ROOT, check=True, timeout=120)
    wait_for(lambda: sent_count() >= 20, 60, "the first sends")
    restart()
    assert sent_count() < 200, "the restart came too late to test anything"
    with Reconciler(env=env):
        wait_for(lambda: sent_count() == 200, 240, f"all 200 sent after {what}")
    ids = [row[0] for row in query("SELECT id FROM messages")]
    assert_each_received_once(emulator, ids, RECIPIENT)
    return worker


def test_redis_restarted_empty_with_200_in_flight(emulator: EmulatorHandle, gmail_account: str,
                                                  fast_settings: dict[str, str],
                                                  private_redis: PrivateRedis,
                                                  start_worker: Callable[..., Worker]) -> None:
    sent_once_across_a_restart(emulator, {**fast_settings, **private_redis.env}, start_worker,
                               private_redis.restart_empty, "Redis lost everything")


class PrivateRabbitMQ:
    """A RabbitMQ node of the test's own (its own name, ports and data directory), so that
    restarting it disturbs nobody else's broker. Debian's wrapper runs the node as the
    rabbitmq user: the directory is handed to it."""

    def __init__(self) -> None:
        from mailrelay.devstack import free_port

        self.port, dist = free_port(), free_port()
        self.name = f"mailrelay-test-{self.port}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="mailrelay-rabbitmq-"))
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam("rabbitmq")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(dist), "RABBITMQ_MNESIA_BASE": f"{self.dir}/mnesia",
                    "RABBITMQ_LOG_BASE": f"{self.dir}/log", "RABBITMQ_CONFIG_FILE": f"{self.dir}/rabbitmq",
                    "RABBITMQ_ENABLED_PLUGINS_FILE": f"{self.dir}/enabled_plugins",
                    "RABBITMQ_PID_FILE": f"{self.dir}/pid"}
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True, timeout=60,
                       capture_output=True)
        deadline = time.monotonic() + 60
        while self._ctl("await_startup", timeout=60).returncode != 0:
            assert time.monotonic() < deadline, "the private RabbitMQ did not start"
            time.sleep(0.5)

    def stop(self) -> None:
        self._ctl("stop", timeout=60)

    def restart(self) -> None:
        """The node stopped and started again, as a host reboot or an upgrade does: every
        connection cut; what the quorum queues hold kept on disk."""
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["rabbitmqctl", "-q", "-n", self.name, *args], env=self.env,
                              timeout=timeout, capture_output=True, check=False)


@pytest.fixture
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    node = PrivateRabbitMQ()
    node.start()
    yield node
    node.remove()


@pytest.mark.rabbitmq_only
def test_rabbitmq_restarted_with_200_in_flight(emulator: EmulatorHandle, gmail_account: str,
                                               fast_settings: dict[str, str],
                                               private_rabbitmq: PrivateRabbitMQ,
                                               start_worker: Callable[..., Worker]) -> None:
    env = {**fast_settings, "MAILRELAY_BROKER_URL": private_rabbitmq.url}
    worker = sent_once_across_a_restart(emulator, env, start_worker, private_rabbitmq.restart,
                                        "RabbitMQ restarted")
    # The worker came back to the broker by itself, and is still the one sending.
    assert worker.process.poll() is None
    assert "Connection to broker lost" in worker.log_path.read_text(errors="replace")


def test_an_outage_of_60_seconds(emulator: EmulatorHandle, gmail_account: str,
                                 start_worker: Callable[..., Worker]) -> None:
    emulator.client.inject(endpoint="gmail.send", status=503, retry_after=8)
    # A 503 may come after the provider took the message, so each retry asks first; this
    # test is about Retry-After, not lagging lookups (the emulator's are instant here).
    start_worker("mailrelay.gmail", concurrency=4,
                 extra_env={"MAILRELAY_VERIFY_SETTLE_SECONDS": "1",
                            "MAILRELAY_VERIFY_RECHECK_SECONDS": "1"})
    ids = submit_all(30)
    ended = threading.Timer(60, emulator.client.clear_faults)
    ended.start()
    try:
        wait_for(lambda: sent_count() == 30, 150, "all 30 sent after the outage")
    finally:
        ended.cancel()
    assert_each_received_once(emulator, ids, RECIPIENT)
    rows = query("SELECT message_id, number, started_at, finished_at, error_code FROM attempts "
                 "ORDER BY message_id, number")
    by_message: dict[str, list[Any]] = collections.defaultdict(list)
    for row in rows:
        by_message[row.message_id].append(row)
    for attempts in by_message.values():
        assert len(attempts) >= 5  # backoff through the outage, visible attempt by attempt
        assert attempts[-1].error_code is None
        for before, after in itertools.pairwise(attempts):
            assert before.error_code == "provider_unavailable"
            # Retry-After: 8 was honoured: no attempt started earlier than it allowed.
            assert after.started_at - before.finished_at >= dt.timedelta(seconds=8)


def test_producers_retrying_with_the_same_keys(clean_db: None, clean_redis: None,
                                               start_worker: Callable[..., Worker]) -> None:
    from mailrelay.auth import accounts
    from mailrelay.celery_app import SEND_TASK, app

    accounts.add("sink", SENDER)
    start_worker("mailrelay.intake,mailrelay.sink", concurrency=4)

    def produce(n: int) -> None:
        # A producer whose first publish it believes lost: it sends the same request again
        # (a new task id each time), as producers do.
        for _ in range(3):
            app.send_task(SEND_TASK, kwargs={"message": message(n, idempotency_key=f"order-{n}")},
                          queue="mailrelay.intake")

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: scalar("SELECT count(*) FROM sink_deliveries") >= 100, 120, "100 deliveries")
    time.sleep(2)  # any duplicate would show up now
    assert scalar("SELECT count(*) FROM messages") == 100
    assert scalar("SELECT count(*) FROM sink_deliveries") == 100
    assert scalar("SELECT count(DISTINCT idempotency_key) FROM messages") == 100

    from mailrelay.client import submit

    conflict = submit(message(7, idempotency_key="order-7", text="another body"))
    assert (conflict.state, conflict.error_code) == ("rejected", "idempotency_conflict")
    repeat = submit(message(7, idempotency_key="order-7"))
    assert repeat.state == "sent" and repeat.message_id == scalar(
        "SELECT id FROM messages WHERE idempotency_key = 'order-7'")


def test_the_database_unreachable_for_a_minute(emulator: EmulatorHandle, gmail_account: str,
                                               start_worker: Callable[..., Worker]) -> None:
    url = os.environ["MAILRELAY_DATABASE_URL"]
    outage = Outage(5432)
    outage.up()
    worker_env = {"MAILRELAY_DATABASE_URL": url.replace("127.0.0.1:5432", f"127.0.0.1:{outage.port}")}
    assert worker_env["MAILRELAY_DATABASE_URL"] != url
    start_worker("mailrelay.gmail", concurrency=4, extra_env=worker_env)
    outage.down()
    ids = submit_all(30)  # accepted through this process's own connection
    time.sleep(60)
    assert sent_count() == 0
    assert scalar("SELECT count(*) FROM messages WHERE state = 'failed'") == 0
    outage.up()
    try:
        wait_for(lambda: sent_count() == 30, 120, "all 30 sent once the database is back")
    finally:
        outage.down()
    assert scalar("SELECT count(*) FROM messages WHERE state = 'failed'") == 0
    assert_each_received_once(emulator, ids, RECIPIENT)
    # The tasks retried; the messages did not: one attempt each.
    assert scalar("SELECT max(attempt_count) FROM messages") == 1
