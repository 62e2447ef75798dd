"""`mailrelay drill run revoked-grant` end to end, on-call's side played by this test
following runbooks/drills.md step by step: the commands are read from the runbook, run
as written (placeholders filled), and the consent page is answered as a person would.

Real Prometheus with monitoring/'s rules (alerts' ``for:`` divided by 150), Alertmanager,
Pushgateway, beat exporting every 2 s, intake, control and Microsoft workers, the emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from mailrelay.devmonitoring import AlertLog, start_monitoring
from mailrelay.devstack import Stack, free_port
from tests.integration.conftest import EmulatorHandle
from tests.runbook_text import ROOT, RUNBOOKS, commands

pytestmark = pytest.mark.integration
SETTINGS = ("MAILRELAY_DATABASE_URL", "MAILRELAY_BROKER_URL", "MAILRELAY_RESULT_BACKEND",
            "MAILRELAY_REDIS_URL", "REQUESTS_CA_BUNDLE")


@pytest.fixture
def demo(tmp_path: Path, emulator: EmulatorHandle, ms_account: str,
         gmail_account: str) -> Iterator[tuple[Path, str]]:
    """A running system as `mailrelay demo --monitoring` leaves it: its stack file."""
    stack = Stack(tmp_path)
    alerts = AlertLog()
    profiles = ("intake", "control", "microsoft", "gmail")
    ports = {name: free_port() for name in (*profiles, "beat")}
    try:
        urls = start_monitoring(
            stack, {"mailrelay-workers": [f"127.0.0.1:{ports[n]}" for n in profiles],
                    "mailrelay-beat": [f"127.0.0.1:{ports['beat']}"]},
            alerts.urls(), interval="1s", for_scale=1 / 150)
        env = {"MAILRELAY_PUSHGATEWAY_URL": urls.pushgateway, "MAILRELAY_EXPORT_INTERVAL": "2",
               "PROMETHEUS_MULTIPROC_DIR": ""}
        for name in profiles:
            stack.start_worker(name, env={**env, "MAILRELAY_METRICS_PORT": str(ports[name])},
                               concurrency=2)
        beat = stack.start("beat", [sys.executable, "-m", "mailrelay.cli", "beat", "--schedule-file",
                                    str(tmp_path / "celerybeat-schedule")],
                           {**env, "MAILRELAY_METRICS_PORT": str(ports["beat"])})
        for name in profiles:
            stack.wait_log(f"worker-{name}", " ready.")
        stack_file = tmp_path / "stack.json"
        stack_file.write_text(json.dumps({
            "env": {k: v for k, v in os.environ.items() if k in SETTINGS},
            "emulator": {"url": emulator.url, "bundle": emulator.bundle},
            "senders": {"microsoft": ms_account, "gmail": gmail_account}, "serves": {"beat": [beat.pid]},
            "intervals": {"export": 2, "rollout": 60},
            "monitoring": {"prometheus": urls.prometheus, "alertmanager": urls.alertmanager,
                           "pushgateway": urls.pushgateway}}))
        yield stack_file, urls.prometheus
    finally:
        stack.stop()
        alerts.close()


def _firing(prometheus: str, alert: str) -> bool:
    found = requests.get(f"{prometheus}/api/v1/query", timeout=10, params={
        "query": f'ALERTS{{alertname="{alert}", alertstate="firing"}}'}).json()
    return bool(found["data"]["result"])


def _mailrelay(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", *args], capture_output=True,
                          text=True, timeout=90, cwd=ROOT)


def _reconnect(args: list[str], emulator: EmulatorHandle) -> subprocess.CompletedProcess[str]:
    """`mailrelay auth reconnect ... --no-browser`, with this test at the browser: open the
    printed URL, press Allow, follow the redirect to the command's loopback port."""
    process = subprocess.Popen([sys.executable, "-m", "mailrelay.cli", *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = ""
    for line in process.stdout:
        if line.strip().startswith("https://"):
            url = line.strip()
            break
    assert url, "no consent URL printed"
    assert dict(parse_qsl(urlsplit(url).query))["redirect_uri"].startswith("http://127.0.0.1:")
    allowed = requests.get(url + "&auto=1", allow_redirects=False, verify=emulator.bundle,
                           timeout=10)
    requests.get(allowed.headers["Location"], timeout=10)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode or 0, out, err)


def _section(name: str) -> Path:
    """The drill's walk-through alone, as a page of its own for the command extractor."""
    text = (RUNBOOKS / "drills.md").read_text()
    start = text.index(f"## {name}\n")
    end = text.find("\n## ", start + 1)
    page = RUNBOOKS / f".drill-{name}.md"
    page.write_text(text[start:end if end > 0 else None])
    return page


def test_a_revoked_grant_drill_scored_while_on_call_follows_the_runbook(
        demo: tuple[Path, str], emulator: EmulatorHandle, ms_account: str) -> None:
    stack_file, prometheus = demo
    page = _section("revoked-grant")
    try:
        steps = commands(page)
    finally:
        page.unlink()
    assert [" ".join(s.args[:2]) for s in steps] == [
        "accounts list", "accounts check", "failed --since", "auth reconnect", "accounts check",
        "accounts list"]

    drill = subprocess.Popen([sys.executable, "-m", "mailrelay.cli", "drill", "run",
                              "revoked-grant", "--stack", str(stack_file), "--json", "--poll",
                              "0.5", "--timeout", "300"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _firing(prometheus, "MailrelayAccountsNeedReconnect"):
            assert drill.poll() is None, drill.communicate()
            assert time.monotonic() < deadline, "the drill's alert never fired"
            time.sleep(0.5)

        # On-call follows the walk-through, command by command, as written.
        codes = []
        for step in steps:
            args = [ms_account if word == "ADDRESS" else word for word in step.args]
            done = (_reconnect(args, emulator) if args[:2] == ["auth", "reconnect"]
                    else _mailrelay(args))
            assert done.returncode in step.exits, (step, done.stderr)
            codes.append(done.returncode)
        # Before the fix the account could not send; after it, it could.
        assert codes[1] == 1 and codes[4] == 0

        out, err = drill.communicate(timeout=120)
    finally:
        if drill.poll() is None:
            drill.kill()
    assert drill.returncode == 0, err
    score = json.loads(out)
    assert score["passed"] is True and score["alert"] == "MailrelayAccountsNeedReconnect"
    assert 0 < score["detected"] <= score["mitigated"] <= score["verified"]
    assert score["states"] == {"sent": score["messages"]} and score["messages"] == 6
    # Each of the drill's messages reached its recipient once.
    received = [m for m in emulator.client.messages() if m.get("subject", "").startswith("drill")]
    assert len(received) == 6
