"""Serving /metrics from a prefork worker: one endpoint adding up every pool child.

prometheus_client picks its storage when it is first imported, so the multiprocess
directory is set up (``prepare``) before anything imports ``mailrelay.metrics``; the
worker's main process then serves the sum of its children's files (``serve``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from mailrelay.errors import ConfigError
from mailrelay.logctx import get_logger

ENV = "PROMETHEUS_MULTIPROC_DIR"
log = get_logger(__name__)


def prepare(port: int) -> None:
    """Choose a fresh multiprocess directory for this worker, unless one is given."""
    if not port or os.environ.get(ENV):
        return
    if "prometheus_client" in sys.modules:
        # The `celery` command loads flower's plugin, which imports prometheus_client
        # before our app module: too late to choose multiprocess storage here.
        raise ConfigError(
            f"MAILRELAY_METRICS_PORT needs {ENV} set to an empty directory when the worker is "
            "started with `celery ... worker`; `mailrelay worker` sets it itself")
    os.environ[ENV] = tempfile.mkdtemp(prefix="mailrelay-metrics-")


def serve(port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104  # scraped from outside
    log.info("serving /metrics on port %d", port)


def child_exited(pid: int) -> None:
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def cleanup(**_: Any) -> None:
    directory = os.environ.get(ENV, "")
    if directory.startswith(tempfile.gettempdir()) and "mailrelay-metrics-" in directory:
        shutil.rmtree(directory, ignore_errors=True)
