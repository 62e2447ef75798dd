"""`mailrelay bench`: delivery throughput against a bare Celery task, as a table of ratios,
and intake throughput (validate, policy, rollout gate, one insert) in this process.

Both sides run on one worker with the same pool and concurrency and make the same
provider call: the sink adapter (MIME build, one insert, MAILRELAY_SINK_LATENCY_MS of
waiting), or the Gmail adapter's HTTPS call to the emulator. The difference is what
mailrelay adds: the claim and finish transactions, the token cache, attempt and audit
rows. Rounds alternate between the two sides and the median is reported, because shared
machines are noisy. ``--rollout`` sets a rollout on the provider at 100% first, so that
every intake goes through the gate (the sender's bucket computed, the route recorded).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mailrelay.cli.output import emit_json, json_option, table

SENDERS = {"sink": "bench-sink@example.com", "gmail": "bench-gmail@example.com"}
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"  # the emulator's only


def _message(provider: str, i: int) -> dict[str, Any]:
    return {"from": SENDERS[provider], "to": [f"rcpt{i}@example.org"], "subject": f"bench {i}",
            "text": "Benchmark message body.\n" * 20, "html": "<p>Benchmark message body.</p>" * 20}


def _count(sql: str) -> int:
    from sqlalchemy import text

    from mailrelay.store.db import get_engine

    with get_engine().connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def _wait(count: Callable[[], int], target: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while count() < target:
        if time.monotonic() > deadline:
            raise click.ClickException(f"benchmark stalled below {target}")
        time.sleep(0.02)
    return time.monotonic()


class Bench:
    def __init__(self, provider: str, emulator: Any = None, token: str = "") -> None:
        self.provider, self.emulator, self.token = provider, emulator, token

    def delivered(self) -> int:
        if self.provider == "sink":
            return _count("SELECT count(*) FROM sink_deliveries")
        return int(self.emulator.stats()["requests"].get("gmail.send", 0))

    def bare(self, n: int) -> float:
        from mailrelay.celery_app import app
        from mailrelay.providers import queue_for
        from mailrelay.tasks.bench import BENCH_TASK

        before = self.delivered()
        start = time.monotonic()
        for i in range(n):
            mid = str(uuid.uuid4())
            app.send_task(BENCH_TASK, kwargs={
                "message_id": mid, "rfc822_message_id": f"<{uuid.UUID(mid).hex}@example.com>",
                "payload": _message(self.provider, i), "provider": self.provider,
                "access_token": self.token}, queue=queue_for(self.provider))
        return n / (_wait(self.delivered, before + n) - start)

    def mailrelay(self, n: int) -> tuple[float, float]:
        """(intake per second, delivery per second) for ``n`` messages."""
        from mailrelay.intake import take_in
        from mailrelay.tasks.routing import enqueue_delivery

        start = time.monotonic()
        ids = [take_in(_message(self.provider, i), request_id=None, actor="bench").result.message_id
               for i in range(n)]
        intake = n / (time.monotonic() - start)
        sent = "SELECT count(*) FROM messages WHERE state = 'sent'"
        before = _count(sent)
        start = time.monotonic()
        for mid in ids:
            enqueue_delivery(mid, self.provider)
        return intake, n / (_wait(lambda: _count(sent), before + n) - start)


def _prepare_gmail(stack: Any) -> tuple[Any, str]:
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
    return emulator, token


@click.command("bench")
@click.option("--provider", type=click.Choice(["sink", "gmail"]), default="gmail", show_default=True,
              help="gmail: HTTPS calls to the emulator; sink: a local insert (plus --latency-ms).")
@click.option("--messages", default=300, show_default=True, help="Messages per round and side.")
@click.option("--rounds", default=3, show_default=True, help="Rounds per side; the median counts.")
@click.option("--concurrency", default=8, show_default=True, help="Worker processes (prefork).")
@click.option("--latency-ms", default="0", show_default=True,
              help="Comma-separated simulated provider latencies (sink only).")
@click.option("--database-url", help="Outbox for the run (default: a fresh SQLite file). "
                                     "PostgreSQL gives the production picture.")
@click.option("--rollout", is_flag=True,
              help="Set a rollout on the provider at 100% first: every intake goes through the gate.")
@json_option
def command(provider: str, messages: int, rounds: int, concurrency: int, latency_ms: str,
            database_url: str | None, rollout: bool, as_json: bool) -> None:
    """Print delivery throughput of mailrelay.deliver vs a bare task, with the ratio, and
    intake throughput."""
    from mailrelay.auth.crypto import new_key
    from mailrelay.devstack import Stack

    workdir = Path(tempfile.mkdtemp(prefix="mailrelay-bench-"))
    os.environ["MAILRELAY_DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'bench.db'}"
    os.environ.setdefault("MAILRELAY_SECRET_KEY", new_key())
    from mailrelay.auth import accounts
    from mailrelay.config import get_settings
    from mailrelay.store import migrate

    get_settings.cache_clear()
    migrate.upgrade(get_settings().database_url)
    if SENDERS["sink"] not in {a["address"] for a in accounts.list_all()}:
        accounts.add("sink", SENDERS["sink"])
    latencies = [int(x) for x in latency_ms.split(",") if x.strip()] if provider == "sink" else [0]
    results = []
    services = Stack(workdir)
    try:
        bench = Bench(provider, *(_prepare_gmail(services) if provider == "gmail" else ()))
        if rollout:
            _set_rollout(provider)
        for latency in latencies:
            results.append(_measure(bench, workdir, latency, messages, rounds, concurrency))
    finally:
        services.stop()
    if as_json:
        emit_json(results)
    else:
        backend = get_settings().database_url.split(":")[0]
        table(results, list(results[0]), title=f"deliver vs bare task ({provider}, {backend})")
    click.echo(json.dumps({"workdir": str(workdir)}), err=True)


def _set_rollout(provider: str) -> None:
    from mailrelay.rollout import manage
    from mailrelay.store import rollouts

    if rollouts.get(provider) is None:
        manage.set_rollout(provider, manage.Changes(percent_bp=10_000), actor="bench",
                           reason="mailrelay bench --rollout")


def _measure(bench: Bench, workdir: Path, latency: int, messages: int, rounds: int,
             concurrency: int) -> dict[str, Any]:
    from mailrelay.devstack import Stack

    stack = Stack(workdir)
    try:
        stack.start(f"worker-{bench.provider}-{latency}", [
            sys.executable, "-m", "celery", "-A", "mailrelay.celery_app", "worker", "-Q",
            f"mailrelay.{bench.provider}", "-P", "prefork", "-c", str(concurrency),
            "--prefetch-multiplier", "1", "-l", "warning", "--without-gossip", "--without-mingle",
            "-n", f"bench-{latency}@%h"], env={"MAILRELAY_SINK_LATENCY_MS": str(latency)})
        time.sleep(1)
        bench.bare(concurrency * 2)  # warm-up: connections, imports, the token cache
        bench.mailrelay(concurrency * 2)
        bare, relay, intake = [], [], []
        for _ in range(rounds):
            bare.append(bench.bare(messages))
            taken, delivered = bench.mailrelay(messages)
            relay.append(delivered)
            intake.append(taken)
    finally:
        stack.stop()
    b, r = statistics.median(bare), statistics.median(relay)
    return {"provider": bench.provider, "latency_ms": latency if bench.provider == "sink" else "-",
            "bare_per_s": round(b, 1), "mailrelay_per_s": round(r, 1), "ratio": round(r / b, 3),
            "target": 0.8, "intake_per_s": round(statistics.median(intake), 1),
            "rollout": _rollout_percent(bench.provider), "rounds": rounds, "messages": messages,
            "concurrency": concurrency}


def _rollout_percent(provider: str) -> str:
    from mailrelay.store import rollouts

    row = rollouts.get(provider)
    return "-" if row is None else f"{row.percent_bp / 100:g}%"
