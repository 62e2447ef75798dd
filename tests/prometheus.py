"""A real Prometheus for tests: Debian's `prometheus` binary on a free port, scraping what
the test says every second, with a throw-away config and data directory.

Use the ``prometheus`` fixture (registered in the root conftest), or ``Prometheus``
directly. Targets are read from a file_sd file that Prometheus re-reads every second, so
a test can add the workers it starts after Prometheus is up (``scrape``). ``SlowProxy``
sits in front of it to make it answer late (a slow or hung Prometheus, for timeouts and
for holding two controllers inside their queries at once).

Not the Debian service: `apt-get install prometheus` may start one on :9090; this
starts its own process, stops it at the end and deletes its data.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import terminate_group

SCRAPE_INTERVAL = "1s"


class Prometheus:
    def __init__(self, workdir: Path, *, rule_files: tuple[Path, ...] = ()) -> None:
        # Imported here: this module is a pytest plugin, loaded before the test
        # environment (tests/services.py) is set.
        from mailrelay.devstack import free_port

        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (scripts/dev installs Debian's package)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = workdir / "targets.json"
        self.rule_files = rule_files
        self.process: subprocess.Popen[bytes] | None = None
        self._targets: list[str] = []
        self.scrape()

    def _config(self) -> str:
        config: dict[str, Any] = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{
                "job_name": "mailrelay",
                "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
            }],
        }
        if self.rule_files:
            config["rule_files"] = [str(path) for path in self.rule_files]
        return json.dumps(config)  # YAML is a superset of JSON

    def start(self) -> Prometheus:
        (self.workdir / "data").mkdir(exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self._config())
        self._log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            terminate_group(self.process, 20)
            self.process = None
            self._log.close()

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def scrape(self, *ports: int) -> None:
        """Add 127.0.0.1:PORT targets (a worker's MAILRELAY_METRICS_PORT)."""
        self._targets += [f"127.0.0.1:{port}" for port in ports]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": self._targets}]))
        tmp.replace(self.targets_file)  # atomic: Prometheus never reads half a file

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        return list(response.json()["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None if empty."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for_targets(self, timeout: float = 30) -> None:
        """Until every target has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = requests.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"][
                "activeTargets"]
            if len(active) == len(self._targets) and all(t["health"] == "up" for t in active):
                return
            time.sleep(0.2)
        raise TimeoutError(f"targets not up: {active}")

    def wait_for(self, expr: str, predicate: Any, timeout: float = 60) -> float | None:
        """Poll ``expr`` until ``predicate(value)``; the value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.value(expr)
            if predicate(value):
                return value
            time.sleep(0.25)
        raise AssertionError(f"{expr} stayed at {value} for {timeout}s")


class SlowProxy:
    """A TCP proxy on 127.0.0.1 that holds each connection ``delay`` seconds before
    passing it on to ``port``: a slow Prometheus, from the client's side."""

    def __init__(self, port: int, delay: float) -> None:
        self.target, self.delay = port, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            if self._stop.wait(self.delay):
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                return
            with upstream:
                pump = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                pump.start()
                _pipe(client, upstream)
                pump.join(10)

    def close(self) -> None:
        self._stop.set()
        self.server.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A started Prometheus scraping nothing yet (``prometheus.scrape(port)``)."""
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = Prometheus(workdir).start()
    yield server
    server.stop()
