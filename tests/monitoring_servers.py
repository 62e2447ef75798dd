"""Real Pushgateway and Alertmanager for tests (``devmonitoring.AlertLog`` receives the webhooks).

Debian's binaries (``prometheus-pushgateway``, ``prometheus-alertmanager``) on free
ports with throw-away data, each in its own process group and stopped at the end;
``scripts/dev`` installs them. A test that needs one skips when it is not installed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import terminate_group


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/dev installs Debian's package)")
    return found


class _Server:
    """A child server answering on /-/ready."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        from mailrelay.devstack import free_port

        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__}.argv")

    def start(self) -> _Server:
        self._log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            terminate_group(self.process, 20)
            self.process = None
            self._log.close()

    def log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class Pushgateway(_Server):
    name = "pushgateway"

    def argv(self) -> list[str]:
        return [_binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{self.port}"]

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


class Alertmanager(_Server):
    name = "alertmanager"

    def __init__(self, workdir: Path, config: Path) -> None:
        super().__init__(workdir)
        self.config = config

    def argv(self) -> list[str]:
        (self.workdir / "am-data").mkdir(exist_ok=True)
        return [_binary("prometheus-alertmanager"), f"--config.file={self.config}",
                f"--storage.path={self.workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address="]  # no gossip port: one instance, nothing to join

    def alerts(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v2/alerts", timeout=5)
        response.raise_for_status()
        return list(response.json())


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    workdir = tmp_path / "pushgateway"
    workdir.mkdir()
    server = Pushgateway(workdir)
    server.start()
    yield server
    server.stop()
