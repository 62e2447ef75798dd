"""A real Pushgateway for tests: Debian's binary on a free port, started the way the demo
starts it (``devmonitoring.start_pushgateway``), with a reader for what it holds."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests


class Pushgateway:
    def __init__(self, url: str) -> None:
        self.url = url

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=5).text

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample of ``name`` in the gateway: sorted labels (job included) → value."""
        from prometheus_client.parser import text_string_to_metric_families

        found: dict[tuple[tuple[str, str], ...], float] = {}
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name:
                    found[tuple(sorted(sample.labels.items()))] = sample.value
        return found


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    from mailrelay.devmonitoring import start_pushgateway
    from mailrelay.devstack import Stack

    if shutil.which("prometheus-pushgateway") is None:
        pytest.skip("prometheus-pushgateway is not installed (scripts/dev installs it)")
    stack = Stack(tmp_path)
    try:
        yield Pushgateway(start_pushgateway(stack))
    finally:
        stack.stop()
