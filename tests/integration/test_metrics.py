"""A prefork worker serves /metrics summed over its pool children, with bounded labels."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from mailrelay.client import submit
from mailrelay.devstack import free_port
from tests.integration.helpers import scalar, wait_for
from tests.processes import Worker

pytestmark = pytest.mark.integration


def test_worker_metrics_count_every_child(sink_account: str, clean_redis: None, tmp_path: Path,
                                          start_worker: Callable[..., Worker]) -> None:
    port = free_port()
    (tmp_path / "prom").mkdir()
    start_worker("mailrelay.sink", concurrency=2, extra_env={
        "MAILRELAY_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        # Each send takes a while, so that both children get some.
        "MAILRELAY_SINK_LATENCY_MS": "50"})
    for i in range(12):
        submit({"from": sink_account, "to": [f"r{i}@example.org"], "subject": "s", "text": "t"})
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == 12, 60, "12 sent")
    # Both children sent some (the attempt records worker/pid): the sum covers two files.
    assert scalar("SELECT count(DISTINCT worker) FROM attempts") == 2
    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(r'^mailrelay_deliveries_total\{code="",provider="sink",result="sent"\} (\S+)$',
                      body, re.MULTILINE)
    assert match is not None, body[:2000]
    assert float(match.group(1)) == 12
    # The latency histogram, split by result, counts the same sends across both children.
    count = re.search(r'^mailrelay_delivery_seconds_count\{provider="sink",result="sent"\} (\S+)$',
                      body, re.MULTILINE)
    assert count is not None and float(count.group(1)) == 12, body[:2000]
    assert sink_account not in body and "example.org" not in body
