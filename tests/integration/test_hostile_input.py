"""Hostile HTML cannot stall intake (issue 12): real intake workers take pathological
bodies and normal ones together; the hostile ones are refused at once with a code and the
others go through as usual."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.helpers import query, scalar, wait_for
from tests.integration.test_pipeline import produce
from tests.processes import Worker

pytestmark = pytest.mark.integration

SENDER = "sender@example.com"
# Each just under the 1 MiB sanitizer limit; nh3 would need minutes for any of them.
HOSTILE = ["<ul><li>" * 120_000, "<div>" * 200_000, "<blockquote>x" * 75_000,
           "<table><tr><td>" * 60_000]


def normal(i: int) -> dict[str, Any]:
    return {"from": SENDER, "to": [f"p{i}@example.org"], "subject": f"normal {i}",
            "html": f"<table><tr><td><p>hello <b>{i}</b></p></td></tr></table>"}


def test_hostile_html_is_refused_at_once_and_other_producers_go_on(
        sink_account: str, clean_redis: None, start_worker: Callable[..., Worker]) -> None:
    start_worker("mailrelay.intake", concurrency=2)
    start_worker("mailrelay.sink", concurrency=2)
    hostile = [{"from": SENDER, "to": ["victim@example.org"], "subject": "h", "html": body}
               for body in HOSTILE]
    started = time.monotonic()
    task_ids = produce(hostile + [normal(i) for i in range(40)])
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state IN ('sent', 'rejected')")
             == 44, timeout=60, what="44 messages to be sent or rejected")
    elapsed = time.monotonic() - started
    by_request = {row[0]: row[1:] for row in query("SELECT request_id, state, error_code FROM messages")}
    assert Counter(by_request[tid] for tid in task_ids[:4]) == {("rejected", "html_too_complex"): 4}
    assert Counter(by_request[tid][0] for tid in task_ids[4:]) == {"sent": 40}
    assert elapsed < 60
