"""monitoring/alertmanager: the rendered config passes `amtool check-config`, every alert
of every severity routes to its tier, render.sh refuses what it cannot render, and the
inhibitions are the ones on-call relies on. (amtool does not evaluate inhibitions:
tests/integration/test_alerting.py proves them in a real Alertmanager.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
FOLDER = ROOT / "monitoring" / "alertmanager"
TIER = {"critical": "page", "warning": "ticket", "info": "info"}
URLS = {"MAILRELAY_ALERT_PAGE_URL": "http://127.0.0.1:9/page",
        "MAILRELAY_ALERT_TICKET_URL": "http://127.0.0.1:9/ticket",
        "MAILRELAY_ALERT_INFO_URL": "https://alerts.example.net/info?token=abc"}


def amtool() -> str:
    found = shutil.which("amtool")
    if found is None:
        pytest.skip("amtool is not installed (scripts/dev installs prometheus-alertmanager)")
    return found


def render(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILRELAY_ALERT_")}
    return subprocess.run(["sh", str(FOLDER / "render.sh"), str(FOLDER / "alertmanager.yml"),
                           str(out)], env={**clean, **env}, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    out = tmp_path / "alertmanager.yml"
    done = render(out, URLS)
    assert done.returncode == 0, done.stderr
    return out


def alerts() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "monitoring" / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [(rule["alert"], rule["labels"]["severity"]) for rule in group["rules"]
                      if "alert" in rule]
    return found


def test_the_rendered_config_is_valid_and_carries_the_urls(rendered: Path) -> None:
    done = subprocess.run([amtool(), "check-config", str(rendered)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(rendered.read_text())
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert urls == {"page": URLS["MAILRELAY_ALERT_PAGE_URL"],
                    "ticket": URLS["MAILRELAY_ALERT_TICKET_URL"],
                    "info": URLS["MAILRELAY_ALERT_INFO_URL"]}
    assert "${" not in rendered.read_text()


@pytest.mark.parametrize(("alertname", "severity"), alerts())
def test_every_alert_routes_to_its_tier(rendered: Path, alertname: str, severity: str) -> None:
    done = subprocess.run(
        [amtool(), "config", "routes", "test", f"--config.file={rendered}",
         f"--verify.receivers={TIER[severity]}", f"alertname={alertname}",
         f"severity={severity}", "provider=gmail"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_route_test_can_fail(rendered: Path) -> None:
    done = subprocess.run(
        [amtool(), "config", "routes", "test", f"--config.file={rendered}",
         "--verify.receivers=page", "alertname=MailrelayWorkerDown", "severity=warning"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode != 0


@pytest.mark.parametrize("missing", sorted(URLS))
def test_render_refuses_an_unset_url(tmp_path: Path, missing: str) -> None:
    done = render(tmp_path / "out.yml", {k: v for k, v in URLS.items() if k != missing})
    assert done.returncode != 0
    assert missing in done.stderr


@pytest.mark.parametrize("bad", ["ftp://x", "http://a|b", "http://x'y"])
def test_render_refuses_what_would_break_the_file(tmp_path: Path, bad: str) -> None:
    done = render(tmp_path / "out.yml", {**URLS, "MAILRELAY_ALERT_PAGE_URL": bad})
    assert done.returncode != 0 and "MAILRELAY_ALERT_PAGE_URL" in done.stderr


def _inhibitions() -> list[dict[str, Any]]:
    return list(yaml.safe_load((FOLDER / "alertmanager.yml").read_text())["inhibit_rules"])


def _names(matchers: list[str]) -> set[str]:
    """The alert names an alertname matcher (= or =~ with |) selects."""
    found: set[str] = set()
    for matcher in matchers:
        key, _, value = matcher.partition("=")
        if key == "alertname":
            found |= set(value.lstrip("~").strip('"').split("|"))
    return found


def test_the_inhibitions_are_the_documented_ones() -> None:
    rules = _inhibitions()
    by_source = {frozenset(_names(r["source_matchers"])): r for r in rules}
    severity = next(r for r in rules if r["source_matchers"] == ['severity="critical"'])
    assert severity["target_matchers"] == ['severity="warning"']
    assert set(severity["equal"]) == {"alertname", "provider"}
    expected = {
        "MailrelayProviderOutage": ({"MailrelayProviderErrorRatio", "MailrelayDeliveryLatency",
                                     "MailrelayErrorBudgetBurn"}, ["provider"]),
        "MailrelayRolloutControllerStalled": ({"MailrelayRolloutRolledBack",
                                               "MailrelayRolloutNeedsAttention"}, ["provider"]),
        "MailrelayBeatDown": ({"MailrelayExportStale", "MailrelayRolloutControllerStalled"}, []),
        "MailrelayQueueWithoutWorker": ({"MailrelayOldestMessageAge", "MailrelayQueueBacklog"},
                                        ["provider"]),
    }
    for source, (targets, equal) in expected.items():
        rule = by_source[frozenset({source})]
        assert _names(rule["target_matchers"]) == targets, source
        assert rule.get("equal", []) == equal, source
    named = {name for _, name_set in [(0, _names(r["source_matchers"]) | _names(r["target_matchers"]))
                                      for r in rules] for name in name_set}
    assert named <= {name for name, _ in alerts()}, "an inhibition names an alert that does not exist"
