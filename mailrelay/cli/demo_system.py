"""The demo's processes: workers, beat and Flower, and with ``--monitoring`` the
monitoring stack scraping them; and the stack file that `mailrelay scenarios` reads.

Without monitoring one worker serves every queue (``--profile all``). With it, one
worker per profile, as in production and in docker/compose.yaml: a scenario can then
stop the Gmail workers alone and watch a backlog build while intake goes on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workers
from mailrelay.devmonitoring import AlertLog, MonitoringUrls, start_monitoring
from mailrelay.devstack import Stack, free_port

# Which process groups serve which queue, for scenarios that pause them; "beat" too.
Serves = dict[str, list[int]]


@dataclass
class System:
    serves: Serves = field(default_factory=dict)
    monitoring: MonitoringUrls | None = None
    alerts: AlertLog | None = None
    env: dict[str, str] = field(default_factory=dict)
    scraped: list[str] = field(default_factory=list)  # host:port Prometheus scrapes


def start(stack: Stack, workdir: Path, *, monitoring: bool,
          echo: Callable[[str], None]) -> System:
    system = System()
    profiles = [name for name in workers.names() if name != "all"] if monitoring else ["all"]
    ports = {name: free_port() for name in [*profiles, "beat"]} if monitoring else {}
    common: dict[str, str] = {}
    if monitoring:
        system.alerts = AlertLog(echo=echo)
        targets = {"mailrelay-workers": [f"127.0.0.1:{ports[p]}" for p in profiles],
                   "mailrelay-beat": [f"127.0.0.1:{ports['beat']}"]}
        system.monitoring = start_monitoring(stack, targets, system.alerts.urls(), interval="5s")
        system.scraped = [*targets["mailrelay-workers"], *targets["mailrelay-beat"],
                          system.monitoring.pushgateway]
        common = {"MAILRELAY_PUSHGATEWAY_URL": system.monitoring.pushgateway,
                  "MAILRELAY_PROMETHEUS_URL": system.monitoring.prometheus,
                  # Each worker its own metrics directory (`mailrelay worker` makes one).
                  "PROMETHEUS_MULTIPROC_DIR": ""}
    for name in profiles:
        env = {**common, "MAILRELAY_METRICS_PORT": str(ports[name])} if monitoring else {}
        process = stack.start_worker(name, env=env, concurrency=2 if monitoring else None)
        for queue in workers.load(name).queues:
            system.serves.setdefault(queue, []).append(process.pid)
    beat_env = {**common, "MAILRELAY_METRICS_PORT": str(ports["beat"])} if monitoring else {}
    beat = stack.start("beat", [sys.executable, "-m", "mailrelay.cli", "beat", "--schedule-file",
                                str((workdir / "celerybeat-schedule").resolve())], beat_env)
    system.serves["beat"] = [beat.pid]
    stack.start("flower", [sys.executable, "-m", "mailrelay.cli", "flower"])
    for name in profiles:
        stack.wait_log(f"worker-{name}", " ready.")
    system.env = common
    return system


def write_stack_file(path: Path, system: System, *, emulator_url: str, bundle: str,
                     senders: dict[str, str]) -> None:
    """What `mailrelay scenarios run --stack PATH` needs; no secret goes in it."""
    from mailrelay.config import get_settings

    settings = get_settings()
    keep = ("MAILRELAY_DATABASE_URL", "MAILRELAY_BROKER_URL", "MAILRELAY_RESULT_BACKEND",
            "MAILRELAY_REDIS_URL", "REQUESTS_CA_BUNDLE")
    stack: dict[str, Any] = {
        "env": {name: os.environ[name] for name in keep if name in os.environ},
        "emulator": {"url": emulator_url, "bundle": bundle},
        "senders": senders,
        "serves": system.serves,
        "intervals": {"rollout": settings.rollout_interval, "export": settings.export_interval},
    }
    if system.monitoring is not None:
        stack["monitoring"] = {"prometheus": system.monitoring.prometheus,
                               "alertmanager": system.monitoring.alertmanager,
                               "pushgateway": system.monitoring.pushgateway}
    path.write_text(json.dumps(stack, indent=2))
