"""Alerts proven end to end: real Prometheus with monitoring/'s rules, real Alertmanager
with its routes and inhibitions, real Pushgateway fed by beat's export, real workers,
beat and the emulator; `mailrelay scenarios run` makes the traffic and the faults.

Only what cannot be waited for in a test is shortened: every alert's ``for:`` (150 times:
5m is 2 s, 10m is 4 s, so a warning still waits longer than its critical), the
scrape and evaluation interval (1 s), the export and controller intervals (3 s and 2 s, and the
alerts scale by them), Alertmanager's group waits, and one threshold: the oldest
message's age (300 s in production) is 15 s here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from mailrelay.devmonitoring import AlertLog, MonitoringUrls, start_monitoring
from mailrelay.devstack import Stack, free_port
from tests.grafana_queries import panel_queries
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import scalar

pytestmark = pytest.mark.integration
GROUP_WAIT = 3.0


@dataclass
class Monitored:
    stack: Stack
    urls: MonitoringUrls
    alerts: AlertLog
    stack_file: Path
    sender: str
    runs: list[subprocess.Popen[str]] = field(default_factory=list)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.urls.prometheus}/api/v1/query", params={"query": expr},
                                timeout=10)
        response.raise_for_status()
        return list(response.json()["data"]["result"])

    def firing(self) -> set[tuple[str, str]]:
        """(alertname, severity) of every alert firing in Prometheus now."""
        return {(r["metric"]["alertname"], r["metric"].get("severity", ""))
                for r in self.query('ALERTS{alertstate="firing"}')}

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for run in self.runs:
                if run.poll() not in (None, 0):
                    raise AssertionError(f"the scenario failed: {run.stderr.read() if run.stderr else ''}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; firing: {sorted(self.firing())}; "
                                     f"delivered: {self.alerts.received[-5:]}")
            time.sleep(0.5)

    def scenario_alerts(self, name: str) -> list[tuple[str, str]]:
        from mailrelay.cli.scenarios import find

        return list(find(name).alerts)

    def scenario(self, name: str, *, duration: float, rate: float) -> subprocess.Popen[str]:
        run = subprocess.Popen(
            [sys.executable, "-m", "mailrelay.cli", "scenarios", "run", name, "--duration",
             str(duration), "--rate", str(rate), "--stack", str(self.stack_file), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.runs.append(run)
        return run


def _finished(process: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return dict(json.loads(out))


@pytest.fixture
def monitored(tmp_path: Path, emulator: EmulatorHandle, gmail_account: str) -> Iterator[Monitored]:
    stack = Stack(tmp_path)
    alerts = AlertLog()
    ports = {name: free_port() for name in ("intake", "control", "gmail", "beat")}
    try:
        urls = start_monitoring(
            stack, {"mailrelay-workers": [f"127.0.0.1:{ports[n]}" for n in ("intake", "control", "gmail")],
                    "mailrelay-beat": [f"127.0.0.1:{ports['beat']}"]},
            alerts.urls(), interval="1s", for_scale=1 / 150,
            thresholds={"MailrelayOldestMessageAge": ("300", "15")},
            timing={"group_wait": f"{GROUP_WAIT:.0f}s", "group_interval": "2s",
                    "repeat_interval": "1h"})
        env = {"MAILRELAY_PUSHGATEWAY_URL": urls.pushgateway,
               "MAILRELAY_PROMETHEUS_URL": urls.prometheus,
               "MAILRELAY_EXPORT_INTERVAL": "3", "MAILRELAY_ROLLOUT_INTERVAL": "2",
               "PROMETHEUS_MULTIPROC_DIR": ""}
        workers = {name: stack.start_worker(name, env={**env, "MAILRELAY_METRICS_PORT": str(ports[name])},
                                            concurrency=4 if name in ("gmail", "control") else 2)
                   for name in ("intake", "control", "gmail")}
        beat = stack.start("beat", [sys.executable, "-m", "mailrelay.cli", "beat", "--schedule-file",
                                    str(tmp_path / "celerybeat-schedule")],
                           {**env, "MAILRELAY_METRICS_PORT": str(ports["beat"])})
        for name in workers:
            stack.wait_log(f"worker-{name}", " ready.")
        stack_file = tmp_path / "stack.json"
        stack_file.write_text(json.dumps({
            "env": {k: v for k, v in os.environ.items()
                    if k in ("MAILRELAY_DATABASE_URL", "MAILRELAY_BROKER_URL",
                             "MAILRELAY_RESULT_BACKEND", "MAILRELAY_REDIS_URL", "REQUESTS_CA_BUNDLE")},
            "emulator": {"url": emulator.url, "bundle": emulator.bundle},
            "senders": {"gmail": gmail_account},
            "serves": {"mailrelay.gmail": [workers["gmail"].pid], "beat": [beat.pid]},
            "intervals": {"rollout": 2, "export": 3}}))
        system = Monitored(stack, urls, alerts, stack_file, gmail_account)
        # Every target up and one export in, before any scenario.
        system.wait("targets up", lambda: len(system.query('up == 1')) == 5, 60)
        system.wait("first export", lambda: bool(
            system.query("mailrelay_export_last_success_timestamp_seconds")), 60)
        yield system
    finally:
        stack.stop()
        alerts.close()
        emulator.client.clear_faults()


def _paged(m: Monitored, alertname: str, **labels: str) -> Callable[[], bool]:
    return lambda: any(d.get("alertname") == alertname and d.get("severity") == "critical"
                       and all(d.get(k) == v for k, v in labels.items())
                       for d in m.alerts.delivered("page"))


def test_scenarios_make_their_alerts_fire_and_alertmanager_routes_and_inhibits_them(
        monitored: Monitored) -> None:
    m = monitored

    # Error rate critical first, while no earlier sends dilute the ratio: 20% refused.
    # The critical pages, its warning (which waits longer) is silenced.
    since = len(m.alerts.received)
    run = m.scenario("error-rate-critical", duration=30, rate=4)
    m.wait("error ratio critical paged", _paged(m, "MailrelayProviderErrorRatio", provider="gmail"))
    m.wait("burn rate paged", _paged(m, "MailrelayErrorBudgetBurn", provider="gmail"))
    assert ("MailrelayProviderErrorRatio", "warning") in m.firing()
    time.sleep(GROUP_WAIT + 2)
    assert ("MailrelayProviderErrorRatio", "warning") not in m.alerts.firing("ticket", since)
    _finished(run)

    # Controller stalled: beat stops while a rollout runs. Beat down pages; the stalled
    # controller and the stale export fire too, and beat down silences both.
    since = len(m.alerts.received)
    run = m.scenario("controller-stalled", duration=40, rate=1)
    m.wait("beat down paged", _paged(m, "MailrelayBeatDown"))
    m.wait("controller stalled and export stale firing", lambda: {
        ("MailrelayRolloutControllerStalled", "warning"), ("MailrelayExportStale", "warning")}
        <= m.firing())
    time.sleep(GROUP_WAIT + 2)
    ticket = {name for name, _ in m.alerts.firing("ticket", since)}
    assert "MailrelayRolloutControllerStalled" not in ticket
    assert "MailrelayExportStale" not in ticket
    _finished(run)

    # Backlog: the Gmail workers stop while producers go on. No worker on the queue
    # pages; the oldest message's age fires and is silenced by it.
    # Nothing may be aging from before (delivered legitimately): what fires now is new.
    m.wait("no message waiting", lambda: ("MailrelayOldestMessageAge", "warning") not in m.firing())
    since = len(m.alerts.received)
    run = m.scenario("backlog", duration=30, rate=2)
    m.wait("no worker on mailrelay.gmail paged",
           _paged(m, "MailrelayQueueWithoutWorker", queue="mailrelay.gmail"))
    m.wait("oldest message age firing", lambda: ("MailrelayOldestMessageAge", "warning") in m.firing())
    # The exported age is right as of its push: push time minus age is when the oldest
    # queued message was created, as the outbox says (to a second).
    created = m.query('push_time_seconds{job="mailrelay-export"} - on (job) '
                      'mailrelay_outbox_oldest_queued_age_seconds{provider="gmail"}')
    oldest = scalar("SELECT EXTRACT(EPOCH FROM min(created_at)) FROM messages "
                    "WHERE state = 'queued' AND provider = 'gmail'")
    assert created and oldest is not None
    assert abs(float(created[0]["value"][1]) - float(oldest)) < 1.0
    time.sleep(GROUP_WAIT + 2)
    assert "MailrelayOldestMessageAge" not in {name for name, _ in m.alerts.firing("ticket", since)}
    _finished(run)

    # Every dashboard query answers with data after this traffic.
    empty = [f"{q.dashboard} / {q.panel}: {q.expr}" for q in panel_queries("gmail")
             if not m.query(q.expr)]
    assert empty == []

    # The export's series come from the Pushgateway only: never from a worker's /metrics
    # (prefork's multiprocess files would add them there, with a pid).
    assert m.query('{__name__=~"mailrelay_(queue|outbox|export)_.+", job="mailrelay-workers"}') == []

    # Nothing of the messages reached Alertmanager.
    posted = json.dumps(m.alerts.received)
    assert m.sender not in posted and "example.org" not in posted


def test_latency_tokens_and_intake_spikes_make_their_alerts_fire(monitored: Monitored) -> None:
    """Latency pages; token refresh failures reach the ticket tier; validation and
    sanitization spikes the info tier."""
    m = monitored
    # Latency first, while the window holds no fast sends: every send takes 16 s.
    run = m.scenario("latency-critical", duration=35, rate=1)
    m.wait("latency critical paged", _paged(m, "MailrelayDeliveryLatency", provider="gmail"), 120)
    _finished(run)
    for name, tier in (("token-refresh-failures", "ticket"), ("validation-spike", "info"),
                       ("sanitization-spike", "info")):
        run = m.scenario(name, duration=20, rate=4)
        expected = set(m.scenario_alerts(name))
        m.wait(f"{name}: {expected} delivered to {tier}",
               lambda expected=expected, tier=tier: expected <= m.alerts.firing(tier))  # type: ignore[misc]
        _finished(run)


def test_an_outage_pages_once_for_the_provider(monitored: Monitored) -> None:
    """Every send fails with 503: the outage pages, and silences the provider's error
    ratio, latency and burn alerts that fire with it."""
    m = monitored
    run = m.scenario("provider-outage", duration=25, rate=3)
    m.wait("outage paged", _paged(m, "MailrelayProviderOutage", provider="gmail"))
    m.wait("the error ratio fires too", lambda: ("MailrelayProviderErrorRatio", "critical") in m.firing())
    time.sleep(GROUP_WAIT + 2)
    page = {name for name, _ in m.alerts.firing("page")}
    assert page.isdisjoint({"MailrelayProviderErrorRatio", "MailrelayErrorBudgetBurn"}), page
    _finished(run)
