"""The monitoring stack on one machine, for the demo (``--monitoring``) and the tests.

Prometheus, Alertmanager and Pushgateway from Debian's packages, started as child
processes of a ``devstack.Stack`` on free ports, with the repository's own
``monitoring/``: the scrape jobs of ``prometheus.yml`` with their targets moved to local
ports, the rule files as they are (or with shorter ``for:`` durations, for a test that
cannot wait 15 minutes), and Alertmanager's routes rendered by its own ``render.sh``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

from mailrelay.devstack import Stack, StackError, free_port

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
BINARIES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager",
            "pushgateway": "prometheus-pushgateway"}
WEBHOOK_VARIABLES = {"page": "MAILRELAY_ALERT_PAGE_URL", "ticket": "MAILRELAY_ALERT_TICKET_URL",
                     "info": "MAILRELAY_ALERT_INFO_URL"}


@dataclass(frozen=True)
class MonitoringUrls:
    prometheus: str
    alertmanager: str
    pushgateway: str


def monitoring_dir() -> Path:
    if not (MONITORING / "prometheus" / "prometheus.yml").exists():
        raise StackError(f"no monitoring/ beside the package ({MONITORING}); run from a checkout")
    return MONITORING


def binary(name: str) -> str:
    found = shutil.which(BINARIES[name])
    if found is None:
        raise StackError(f"{BINARIES[name]} is not installed (Debian: apt-get install "
                         f"{'prometheus-' + name if name != 'prometheus' else name}; "
                         "scripts/dev installs it)")
    return found


def prometheus_config(targets: dict[str, list[str]], *, rule_files: list[Path],
                      alertmanager: str | None, interval: str = "15s",
                      flower_password_file: Path | None = None) -> dict[str, Any]:
    """monitoring/prometheus/prometheus.yml with each job's targets replaced by ``targets``
    (jobs not named there are left out) and the intervals set to ``interval``."""
    config = yaml.safe_load((monitoring_dir() / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": interval,
                        "evaluation_interval": interval}
    config["rule_files"] = [str(path) for path in rule_files]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
        job["scrape_timeout"] = interval
        if "basic_auth" in job:
            if flower_password_file is None:
                continue
            job["basic_auth"]["password_file"] = str(flower_password_file)
        jobs.append(job)
    config["scrape_configs"] = jobs
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    else:
        config.pop("alerting", None)
    return dict(config)


def rule_files(dest: Path, *, for_scale: float | None = None,
               thresholds: dict[str, tuple[str, str]] | None = None) -> list[Path]:
    """The repository's rule files copied to ``dest``. For a test that cannot wait for
    production's durations: ``for_scale`` multiplies every alert's ``for:`` (so that a
    warning still waits longer than its critical, as in production), and ``thresholds``
    maps an alert name to (text, replacement) in its expressions; some rule of that name
    must contain the text. Everything else stays as written."""
    dest.mkdir(parents=True, exist_ok=True)
    thresholds = thresholds or {}
    replaced: set[str] = set()
    copied = []
    for source in sorted((monitoring_dir() / "prometheus" / "rules").glob("*.yml")):
        target = dest / source.name
        rules = yaml.safe_load(source.read_text())
        for group in rules.get("groups", []):
            for rule in group.get("rules", []):
                if "alert" not in rule:
                    continue
                if for_scale is not None and "for" in rule:
                    rule["for"] = f"{max(_seconds(rule['for']) * for_scale, 1):.0f}s"
                old, new = thresholds.get(rule["alert"], ("", ""))
                if old and old in rule["expr"]:
                    rule["expr"] = rule["expr"].replace(old, new)
                    replaced.add(rule["alert"])
        target.write_text(yaml.safe_dump(rules, sort_keys=False))
        copied.append(target)
    if missing := set(thresholds) - replaced:
        raise StackError(f"no threshold to replace in {sorted(missing)}")
    return copied


def _seconds(duration: str) -> float:
    """A Prometheus duration of one unit (30s, 5m, 1h, 1d) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(duration[:-1]) * units[duration[-1]]


def alertmanager_config(dest: Path, urls: dict[str, str], *,
                        timing: dict[str, str] | None = None) -> Path:
    """Render monitoring/alertmanager/alertmanager.yml with its own render.sh, the webhook
    receivers pointing at ``urls`` (page, ticket, info); ``timing`` overrides the route's
    group_wait / group_interval / repeat_interval everywhere (a test's short waits)."""
    folder = monitoring_dir() / "alertmanager"
    env = {**os.environ, **{WEBHOOK_VARIABLES[tier]: url for tier, url in urls.items()}}
    rendered = dest / "alertmanager.yml"
    subprocess.run(["sh", str(folder / "render.sh"), str(folder / "alertmanager.yml"),
                    str(rendered)], env=env, check=True, capture_output=True, timeout=30)
    if timing:
        config = yaml.safe_load(rendered.read_text())
        _retime(config["route"], timing)
        rendered.write_text(yaml.safe_dump(config))
    return rendered


def _retime(route: dict[str, Any], timing: dict[str, str]) -> None:
    for key in ("group_wait", "group_interval", "repeat_interval"):
        if key in timing and (key in route or "receiver" in route):
            route[key] = timing[key]
    for child in route.get("routes", []):
        _retime(child, timing)


def _wait_ready(stack: Stack, name: str, url: str, timeout: float = 30) -> None:
    def ready() -> bool:
        try:
            return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    stack.wait_until(name, ready, timeout, "did not answer on /-/ready")


def start_pushgateway(stack: Stack) -> str:
    port = free_port()
    stack.start("pushgateway", [binary("pushgateway"), f"--web.listen-address=127.0.0.1:{port}"])
    url = f"http://127.0.0.1:{port}"
    _wait_ready(stack, "pushgateway", url)
    return url


def start_alertmanager(stack: Stack, config: Path) -> str:
    port = free_port()
    data = stack.workdir / "alertmanager-data"
    data.mkdir(parents=True, exist_ok=True)
    stack.start("alertmanager", [binary("alertmanager"), f"--config.file={config.resolve()}",
                                 f"--storage.path={data.resolve()}",
                                 f"--web.listen-address=127.0.0.1:{port}",
                                 "--cluster.listen-address="])  # one instance: no gossip port
    url = f"http://127.0.0.1:{port}"
    _wait_ready(stack, "alertmanager", url)
    return url


def start_prometheus(stack: Stack, config: dict[str, Any]) -> str:
    port = free_port()
    folder = (stack.workdir / "prometheus").resolve()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    stack.start("prometheus", [binary("prometheus"), f"--config.file={path}",
                               f"--storage.tsdb.path={folder / 'data'}",
                               f"--web.listen-address=127.0.0.1:{port}",
                               "--storage.tsdb.retention.time=1d"])
    url = f"http://127.0.0.1:{port}"
    _wait_ready(stack, "prometheus", url)
    return url


class AlertLog:
    """A webhook receiver for the local Alertmanager: each notification it gets is kept
    (``received``) and, with ``echo``, printed, so a demo shows what on-call would get."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        lock = threading.Lock()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                with lock:
                    received.append((self.path, body))
                if echo is not None:
                    for alert in body.get("alerts", []):
                        labels = alert.get("labels", {})
                        echo(f"alert {alert.get('status', '?')} → {self.path.strip('/')}: "
                             f"{labels.get('alertname')} ({labels.get('severity')}) "
                             f"{labels.get('provider', '')}".rstrip())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass  # the echo above is the log

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def urls(self) -> dict[str, str]:
        return {tier: f"{self.url}/{tier}" for tier in WEBHOOK_VARIABLES}

    def delivered(self, tier: str, since: int = 0) -> list[dict[str, str]]:
        """The labels of every firing alert posted to ``tier`` (from notification
        number ``since`` on: ``len(received)`` taken earlier)."""
        return [dict(alert.get("labels", {})) for path, body in list(self.received)[since:]
                if path == f"/{tier}" for alert in body.get("alerts", [])
                if alert.get("status") == "firing"]

    def firing(self, tier: str, since: int = 0) -> set[tuple[str, str]]:
        """(alertname, severity) of every firing alert posted to ``tier``."""
        return {(labels.get("alertname", ""), labels.get("severity", ""))
                for labels in self.delivered(tier, since)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_monitoring(stack: Stack, targets: dict[str, list[str]], webhooks: dict[str, str], *,
                     interval: str = "15s", for_scale: float | None = None,
                     thresholds: dict[str, tuple[str, str]] | None = None,
                     timing: dict[str, str] | None = None) -> MonitoringUrls:
    """Pushgateway, Alertmanager and Prometheus with the repository's rules and routes.
    ``targets``: job → host:port (mailrelay-workers, mailrelay-beat; the Pushgateway's
    job is filled in here). The processes scraped may start afterwards."""
    pushgateway = start_pushgateway(stack)
    folder = (stack.workdir / "monitoring").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    alertmanager = start_alertmanager(stack, alertmanager_config(folder, webhooks, timing=timing))
    scrape = {**targets, "mailrelay-export": [pushgateway.removeprefix("http://")]}
    rules = rule_files(folder / "rules", for_scale=for_scale, thresholds=thresholds)
    config = prometheus_config(scrape, rule_files=rules,
                               alertmanager=alertmanager.removeprefix("http://"), interval=interval)
    prometheus = start_prometheus(stack, config)
    return MonitoringUrls(prometheus=prometheus, alertmanager=alertmanager, pushgateway=pushgateway)


def targets_up(prometheus: str, *, expected: int, timeout: float = 60) -> int:
    """Wait until ``expected`` targets are up (or the timeout passes); how many are."""
    deadline = time.monotonic() + timeout
    up = 0
    while True:
        try:
            active = requests.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"][
                "activeTargets"]
            up = sum(1 for target in active if target.get("health") == "up")
        except (requests.RequestException, ValueError, KeyError):
            up = 0
        if up >= expected or time.monotonic() > deadline:
            return up
        time.sleep(0.5)
