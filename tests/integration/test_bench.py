"""`mailrelay bench` runs end to end and prints every figure under its stable key.

What the figures are is for the benchmark to report, run by hand (README, Benchmark):
nothing here is timed. A small run on a private Redis and a fresh PostgreSQL database
checks the keys, that each figure was measured (not left empty), and the one figure that
is a guarantee rather than a speed: a herd meeting an expired token refreshes it once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services

pytestmark = pytest.mark.rabbitmq

NUMBERS = ("ratio", "bare_per_s", "mailrelay_per_s", "intake_per_s", "intake_bare_per_s",
           "intake_ratio")


@pytest.fixture
def private_services(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Redis of the run's own (no other test's worker may take its tasks) and a fresh
    database."""
    from mailrelay.devstack import Stack

    stack = Stack(tmp_path)
    database = services.create_database()
    # On the RabbitMQ pass, a virtual host of the run's own instead.
    vhost = services.create_vhost() if services.BROKER == "rabbitmq" else ""
    try:
        url = stack.start_redis()
        broker = services.amqp_url(vhost) if vhost else f"{url}/0"
        yield {"MAILRELAY_BROKER_URL": broker, "MAILRELAY_RESULT_BACKEND": f"{url}/1",
               "MAILRELAY_REDIS_URL": f"{url}/2", "MAILRELAY_DATABASE_URL": services.pg_url(database)}
    finally:
        stack.stop()
        services.drop_database(database)
        if vhost:
            services.delete_vhost(vhost)



def test_a_small_run_prints_every_key(private_services: dict[str, str]) -> None:
    env = {**os.environ, **private_services}
    run = subprocess.run(
        [sys.executable, "-m", "mailrelay.cli", "bench", "--messages", "16", "--rounds", "1",
         "--concurrency", "2", "--latency-ms", "0", "--producers", "1",
         "--intake-concurrency", "1", "--herd", "8", "--notify", "--database-url",
         private_services["MAILRELAY_DATABASE_URL"], "--json"],
        env=env, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    for key in NUMBERS:
        assert isinstance(result[key], int | float) and result[key] > 0, key
    assert set(result["overhead_ms"]) == {"p50", "p99"}
    assert all(isinstance(v, float) for v in result["overhead_ms"].values())
    cpu = result["cpu_ms_per_send"]
    assert {"bare", "mailrelay", "added", "intake", "intake_bare"} <= set(cpu)
    assert cpu["bare"] > 0 and cpu["mailrelay"] > 0
    assert {"worker", "postgres", "redis"} <= set(result["cpu_counted"])
    if services.BROKER == "rabbitmq":
        assert result["settings"]["broker"] == "amqp"
        assert "rabbitmq" in result["cpu_counted"]
    assert result["worker_rss_mb"]["max"] > 0
    assert (result["herd_token_requests"], result["herd_sends"]) == (1, 8)
    assert set(result["targets"]) == {"ratio", "cpu_ms_added", "overhead_p99_ms", "intake_per_s",
                                      "herd_token_requests"}
    settings = result["settings"]
    assert (settings["provider"], settings["database"], settings["messages"]) == (
        "gmail", "postgresql", 16)
    assert [s["latency_ms"] for s in result["by_latency"]] == [0]
    # --notify: the same messages with a notify, every outcome published, and what it cost.
    notify = result["notify"]
    assert notify["per_s"] > 0 and notify["cpu_ms_per_send"] > 0
    assert isinstance(notify["cpu_ms_added"], float) and settings["notify"] is True
    assert {"worker", "postgres"} <= set(notify["cpu_ms_by_process"])
    # No address or URL of the run's services in what it prints.
    assert "127.0.0.1" not in run.stdout and "@example" not in run.stdout
