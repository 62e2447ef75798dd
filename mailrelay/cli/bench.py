"""`mailrelay bench`: delivery throughput against a bare Celery task, as a table of ratios.

Both sides run on one worker with the same pool and concurrency and make the same
provider call (the sink adapter: MIME build, one insert, and MAILRELAY_SINK_LATENCY_MS of
waiting standing in for a provider round trip). The difference is what mailrelay adds:
the claim and finish transactions, attempt and audit rows. Rounds alternate between the
two sides and the median is reported, because shared machines are noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

from mailrelay.cli.output import emit_json, json_option, table

SENDER = "bench@example.com"


def _message(i: int) -> dict[str, Any]:
    return {"from": SENDER, "to": [f"rcpt{i}@example.org"], "subject": f"bench {i}",
            "text": "Benchmark message body.\n" * 20, "html": "<p>Benchmark message body.</p>" * 20}


def _count(sql: str) -> int:
    from sqlalchemy import text

    from mailrelay.store.db import get_engine

    with get_engine().connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def _wait_count(sql: str, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while _count(sql) < target:
        if time.monotonic() > deadline:
            raise click.ClickException(f"benchmark stalled: {sql} stayed below {target}")
        time.sleep(0.02)
    return time.monotonic()


def _round_bare(n: int) -> float:
    from mailrelay.celery_app import app
    from mailrelay.tasks.bench import BENCH_TASK

    before = _count("SELECT count(*) FROM sink_deliveries")
    start = time.monotonic()
    for i in range(n):
        mid = str(uuid.uuid4())
        app.send_task(BENCH_TASK, kwargs={"message_id": mid, "rfc822_message_id": f"<{mid}@bench>",
                                          "payload": _message(i)}, queue="mailrelay.sink")
    end = _wait_count("SELECT count(*) FROM sink_deliveries", before + n, timeout=600)
    return n / (end - start)


def _round_mailrelay(n: int) -> float:
    from mailrelay.message import validate
    from mailrelay.store import outbox
    from mailrelay.tasks.routing import enqueue_delivery

    account = outbox.find_account(SENDER)
    assert account is not None
    ids = []
    for i in range(n):  # intake is not what is measured here
        message = validate(_message(i))
        ids.append(outbox.accept(message, account, request_id=None, actor="bench",
                                 size_bytes=0).message_id)
    before = _count("SELECT count(*) FROM messages WHERE state = 'sent'")
    start = time.monotonic()
    for mid in ids:
        enqueue_delivery(mid, "sink")
    end = _wait_count("SELECT count(*) FROM messages WHERE state = 'sent'", before + n, timeout=600)
    return n / (end - start)


@click.command("bench")
@click.option("--messages", default=300, show_default=True, help="Messages per round and side.")
@click.option("--rounds", default=3, show_default=True, help="Rounds per side; the median counts.")
@click.option("--concurrency", default=8, show_default=True, help="Worker processes (prefork).")
@click.option("--latency-ms", default="0,50", show_default=True,
              help="Comma-separated simulated provider latencies to measure.")
@click.option("--database-url", help="Outbox for the run (default: a fresh SQLite file). "
                                     "PostgreSQL gives the production picture.")
@json_option
def command(messages: int, rounds: int, concurrency: int, latency_ms: str, database_url: str | None,
            as_json: bool) -> None:
    """Print delivery throughput of mailrelay.deliver vs a bare task, with the ratio."""
    from mailrelay.devstack import Stack

    workdir = Path(tempfile.mkdtemp(prefix="mailrelay-bench-"))
    os.environ["MAILRELAY_DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'bench.db'}"
    from mailrelay.config import get_settings
    from mailrelay.store import accounts, migrate

    get_settings.cache_clear()
    migrate.upgrade(get_settings().database_url)
    if SENDER not in {a["address"] for a in accounts.list_all()}:
        accounts.add("sink", SENDER)
    results = []
    for latency in [int(x) for x in latency_ms.split(",") if x.strip()]:
        stack = Stack(workdir)
        try:
            stack.start(f"worker-{latency}", [
                sys.executable, "-m", "celery", "-A", "mailrelay.celery_app", "worker", "-Q",
                "mailrelay.sink", "-P", "prefork", "-c", str(concurrency), "--prefetch-multiplier",
                "1", "-l", "warning", "--without-gossip", "--without-mingle", "-n",
                f"bench-{latency}@%h"], env={"MAILRELAY_SINK_LATENCY_MS": str(latency)})
            time.sleep(1)
            _round_bare(concurrency * 2)  # warm-up: connections, imports, JIT-free caches
            _round_mailrelay(concurrency * 2)
            bare, relay = [], []
            for _ in range(rounds):
                bare.append(_round_bare(messages))
                relay.append(_round_mailrelay(messages))
        finally:
            stack.stop()
        b, r = statistics.median(bare), statistics.median(relay)
        results.append({"latency_ms": latency, "bare_per_s": round(b, 1),
                        "mailrelay_per_s": round(r, 1), "ratio": round(r / b, 3),
                        "target": 0.8, "rounds": rounds, "messages": messages,
                        "concurrency": concurrency})
    if as_json:
        emit_json(results)
    else:
        backend = get_settings().database_url.split(":")[0]
        table(results, list(results[0]), title=f"deliver vs bare task ({backend})")
    click.echo(json.dumps({"workdir": str(workdir)}), err=True)
