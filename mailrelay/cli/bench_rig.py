"""The benchmark's moving parts: the provider side, and the rig that runs each round on
one delivery worker (pausing and resuming its consumer), the intake worker and the
producers; the outbox queries that time and check the rounds."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mailrelay.cli import bench_proc
from mailrelay.cli.bench_producers import Producers, message
from mailrelay.cli.bench_report import Round

SENDERS = {"sink": "bench-sink@example.com", "gmail": "bench-gmail@example.com"}
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"  # the emulator's only
POLL_SECONDS = 0.02


def _scalar(sql: str, **params: Any) -> Any:
    from sqlalchemy import text

    from mailrelay.store.db import get_engine

    with get_engine().connect() as conn:
        return conn.execute(text(sql), params).scalar()


def unfinished() -> int:
    # The partial indexes on state make this cheap however many messages were sent.
    return int(_scalar("SELECT count(*) FROM messages "
                       "WHERE state IN ('queued', 'sending', 'retrying')") or 0)


def pending_notifications() -> int:
    return int(_scalar("SELECT count(*) FROM notifications WHERE state = 'pending'") or 0)


def wait(done: Callable[[], bool], what: str, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise click.ClickException(f"benchmark stalled: {what} not reached in {timeout:.0f}s")
        time.sleep(POLL_SECONDS)
    return time.monotonic()


class Provider:
    """The provider side of the run: where a send lands and how to count it."""

    def __init__(self, name: str, emulator: Any = None, token: str = "") -> None:
        self.name, self.emulator, self.token = name, emulator, token

    @property
    def queue(self) -> str:
        from mailrelay.providers import queue_for

        return queue_for(self.name)

    def delivered(self) -> int:
        if self.name == "sink":
            return int(_scalar("SELECT count(*) FROM sink_deliveries") or 0)
        return int(self.emulator.stats()["requests"].get("gmail.send", 0))

    def set_latency(self, latency_ms: int) -> dict[str, str]:
        """Make the provider answer ``latency_ms`` late; the worker's environment for it."""
        if self.name == "sink":
            return {"MAILRELAY_SINK_LATENCY_MS": str(latency_ms)}
        self.emulator.clear_faults()
        if latency_ms:
            self.emulator.inject(endpoint="gmail.send", latency_ms=latency_ms)
        return {}


class Rig:
    """One worker for the provider's queue, whose consumer the rounds pause and resume,
    and the intake worker and producers that fill the queue for mailrelay's rounds."""

    def __init__(self, provider: Provider, worker: Any, name: str, intake: Any,
                 producers: Producers, services: dict[str, int]) -> None:
        self.provider, self.worker, self.name = provider, worker, name
        self.intake, self.producers, self.services = intake, producers, services
        self.numbered = 0

    def _control(self, action: str) -> None:
        from mailrelay.celery_app import app

        call = app.control.cancel_consumer if action == "pause" else app.control.add_consumer
        replies = call(self.provider.queue, destination=[self.name], reply=True, timeout=10)
        if not replies:
            raise click.ClickException(f"the bench worker did not answer {action}")

    def _meter(self, worker_pid: int) -> bench_proc.CpuMeter:
        return bench_proc.CpuMeter({"worker": worker_pid, **self.services})

    def bare(self, n: int) -> Round:
        from mailrelay.celery_app import app
        from mailrelay.tasks.bench import BENCH_TASK

        self._control("pause")
        before = self.provider.delivered()
        for i in range(n):
            mid = str(uuid.uuid4())
            app.send_task(BENCH_TASK, kwargs={
                "message_id": mid, "rfc822_message_id": f"<{uuid.UUID(mid).hex}@example.com>",
                "payload": message(SENDERS[self.provider.name], i), "provider": self.provider.name,
                "access_token": self.provider.token}, queue=self.provider.queue)
        return self._drain(n, lambda: self.provider.delivered() >= before + n)

    def take_in(self, n: int, notify: dict[str, str] | None = None) -> Round:
        """Publish ``n`` sends through the producers (the consumer paused), each with
        ``notify`` if given; timed until all are stored and on the provider's queue."""
        from mailrelay.tasks.queue_stats import lengths

        self._control("pause")
        meter = bench_proc.CpuMeter({"intake": self.intake.pid, **self.services})
        meter.start()
        start = time.monotonic()
        self.producers.publish(SENDERS[self.provider.name], self.numbered, n, notify=notify)
        self.numbered += n
        end = wait(lambda: lengths([self.provider.queue])[self.provider.queue] >= n,
                    f"{n} messages routed to {self.provider.queue}")
        cpu = meter.stop()
        parts = {name: round(value * 1000 / n, 3) for name, value in meter.parts.items()}
        if unfinished() != n:
            rejected = _scalar("SELECT count(*) FROM messages WHERE state = 'rejected'")
            raise click.ClickException(f"intake stored {unfinished()} of {n} ({rejected} rejected)")
        return Round(n / (end - start), cpu * 1000 / n, parts)

    def take_in_bare(self, n: int) -> Round:
        """The intake baseline: the same producers publish ``n`` tasks that only route on
        (tasks/bench.py), to the same intake worker; timed the same way."""
        from mailrelay.celery_app import app
        from mailrelay.tasks.bench import BENCH_HOLD_QUEUE, BENCH_INTAKE_TASK
        from mailrelay.tasks.queue_stats import lengths

        meter = bench_proc.CpuMeter({"intake": self.intake.pid, **self.services})
        meter.start()
        start = time.monotonic()
        self.producers.publish(SENDERS[self.provider.name], 0, n, task=BENCH_INTAKE_TASK)
        end = wait(lambda: lengths([BENCH_HOLD_QUEUE])[BENCH_HOLD_QUEUE] >= n,
                    f"{n} baseline tasks routed")
        cpu = meter.stop()
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(BENCH_HOLD_QUEUE)
        return Round(n / (end - start), cpu * 1000 / n,
                     {name: round(value * 1000 / n, 3) for name, value in meter.parts.items()})

    def relay(self, n: int, notified: bool = False) -> tuple[Round, list[float]]:
        """Deliver the ``n`` messages intake queued; the round and each attempt's overhead.
        ``notified``: they carry a ``notify``, and the round also waits for every outcome
        to be published."""
        ids = [str(row) for row in _queued_ids()]
        before = self.provider.delivered()
        last_query = [time.monotonic()]

        def done() -> bool:
            # Polled as the bare side is (the provider's count) until every send reached
            # the provider, then the database for the finishes: a query every poll would
            # add its CPU to mailrelay's side. Every second the database is asked all the
            # same, so that a message that ended without a send cannot stall the round.
            if self.provider.delivered() < before + n and time.monotonic() - last_query[0] < 1:
                return False
            last_query[0] = time.monotonic()
            return unfinished() == 0 and (not notified or pending_notifications() == 0)

        result = self._drain(n, done)
        failed = _scalar("SELECT count(*) FROM messages WHERE state = 'failed'")
        if failed:
            raise click.ClickException(f"{failed} messages failed during the benchmark; "
                                       f"see `mailrelay failed list`")
        return result, _overheads(ids)

    def _drain(self, n: int, done: Callable[[], bool]) -> Round:
        meter = self._meter(self.worker.pid)
        meter.start()
        start = time.monotonic()
        self._control("resume")
        end = wait(done, f"{n} deliveries")
        cpu = meter.stop()
        return Round(n / (end - start), cpu * 1000 / n,
                     {name: round(value * 1000 / n, 3) for name, value in meter.parts.items()})

    def herd(self, n: int, latency_ms: int) -> tuple[int, int]:
        """(token requests, messages sent) for ``n`` deliveries that all meet an expired token."""
        self.take_in(n)
        ids = [str(row) for row in _queued_ids()]
        self.provider.emulator.expire_tokens()
        self.provider.emulator.reset()  # counters from zero (it forgets the latency rule too)
        self.provider.set_latency(latency_ms)
        self._drain(n, lambda: unfinished() == 0)
        requests = int(self.provider.emulator.stats()["requests"].get("google.token", 0))
        return requests, _count_sent(ids)


def dialect() -> str:
    from mailrelay.store.db import get_engine

    return get_engine().dialect.name


def _queued_ids() -> list[str]:
    from sqlalchemy import text

    from mailrelay.store.db import get_engine

    with get_engine().connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT id FROM messages WHERE state = 'queued'"))]


def _count_sent(ids: list[str]) -> int:
    from sqlalchemy import bindparam, text

    from mailrelay.store.db import get_engine

    query = text("SELECT count(*) FROM messages WHERE state = 'sent' AND id IN :ids").bindparams(
        bindparam("ids", expanding=True))
    with get_engine().connect() as conn:
        return int(conn.execute(query, {"ids": ids}).scalar() or 0)


def _overheads(ids: list[str]) -> list[float]:
    """Each attempt's claim-to-finish span less its provider time, in ms."""
    from sqlalchemy import select

    from mailrelay.store.db import get_engine
    from mailrelay.store.models import ATTEMPTS

    query = select(ATTEMPTS.c.started_at, ATTEMPTS.c.finished_at, ATTEMPTS.c.provider_ms).where(
        ATTEMPTS.c.message_id.in_(ids), ATTEMPTS.c.provider_ms.is_not(None),
        ATTEMPTS.c.finished_at.is_not(None))
    with get_engine().connect() as conn:
        rows = conn.execute(query).all()
    return [(end - begin).total_seconds() * 1000 - provider for begin, end, provider in rows]


def prepare_gmail(stack: Any) -> Provider:
    from mailrelay.auth import accounts
    from mailrelay.config import get_settings
    from mailrelay.devstack import emulator_account, emulator_env
    from mailrelay.emulator.client import EmulatorClient
    from mailrelay.providers.gmail import GmailAdapter

    url, bundle = stack.start_emulator()
    os.environ.update(emulator_env(url, bundle))
    get_settings.cache_clear()
    emulator = EmulatorClient(url, verify=bundle)
    emulator_account(emulator, "gmail", SENDERS["gmail"], client_id=CLIENT_ID,
                     client_secret=CLIENT_SECRET)
    # Throughput, not Gmail's per-user rate (150/min), is measured: the highest override
    # keeps the bucket's Redis call in every send without it ever holding one back.
    accounts.configure(SENDERS["gmail"], rate_limit_per_minute=100_000)
    token = GmailAdapter().refresh(accounts.credentials(SENDERS["gmail"])).access_token
    return Provider("gmail", emulator, token)


def services() -> dict[str, int]:
    """The PostgreSQL postmaster, the Redis server and the RabbitMQ server of this run, where
    they run on this machine: their CPU counts as mailrelay's (and the bare task's) too."""
    from mailrelay.config import get_settings
    from mailrelay.redis_client import get_redis

    found: dict[str, int] = {}
    if dialect() == "postgresql":
        backend = int(_scalar("SELECT pg_backend_pid()"))
        postmaster = bench_proc.parent_of(backend)
        if postmaster is not None and "postgres" in _comm(postmaster):
            found["postgres"] = postmaster
    pids = {int(get_redis().info("server")["process_id"])}
    if get_settings().broker_url.startswith("redis"):
        from mailrelay.celery_app import app

        with app.connection_for_write() as connection:
            pids.add(int(connection.default_channel.client.info("server")["process_id"]))
    for n, pid in enumerate(sorted(pids)):
        if "redis" in _comm(pid):
            found["redis" if n == 0 else f"redis{n + 1}"] = pid
    rabbitmq = _local_rabbitmq(get_settings().broker_url)
    if rabbitmq is not None:
        found["rabbitmq"] = rabbitmq
    return found


def _local_rabbitmq(broker_url: str) -> int | None:
    """The RabbitMQ server's Erlang VM, when the broker is RabbitMQ on this machine."""
    from urllib.parse import urlsplit

    from mailrelay.broker_queues import is_amqp

    if not is_amqp(broker_url) or urlsplit(broker_url).hostname not in ("127.0.0.1", "localhost"):
        return None
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _comm(int(proc.name)).strip() == "beam.smp":
            try:
                if b"rabbit" in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except OSError:
                continue
    return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""
