"""monitoring/prometheus: the rules check and their promtool tests pass, and every alert
is complete (severity, summary, description, runbook) and tested."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "monitoring" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "runbooks" / "alerts"
RUNBOOK_URL = "https://github.com/mailrelay/mailrelay/blob/main/runbooks/alerts/"
# The alerts the README, the scenarios and Alertmanager's inhibitions name.
EXPECTED_ALERTS = {
    "MailrelayProviderErrorRatio", "MailrelayErrorBudgetBurn", "MailrelayDeliveryLatency",
    "MailrelayProviderOutage", "MailrelayOldestMessageAge", "MailrelayQueueBacklog",
    "MailrelayQueueWithoutWorker", "MailrelayExpiredLeasesPilingUp",
    "MailrelayTokenRefreshFailures", "MailrelayAccountsNeedReconnect",
    "MailrelayFailedMessagesGrowing", "MailrelayRolloutRolledBack",
    "MailrelayRolloutNeedsAttention", "MailrelayRolloutControllerStalled", "MailrelayBeatDown",
    "MailrelayExportStale", "MailrelayWorkerDown", "MailrelayIntakeRejectionSpike",
    "MailrelayHtmlSanitizationSpike", "MailrelayDeadLettered",
    "MailrelayNotificationsPendingOld",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (scripts/dev installs Debian's prometheus)")
    return found


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_promtool_checks_the_rule_files() -> None:
    done = subprocess.run([promtool(), "check", "rules", *map(str, RULE_FILES)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    done = subprocess.run([promtool(), "test", "rules", path.name], cwd=path.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_promtool_tests_can_fail(tmp_path: Path) -> None:
    """A broken threshold makes the suite fail: the tests compare, not just run."""
    scratch = Path(shutil.copytree(PROMETHEUS, tmp_path / "prometheus"))
    alerts_file = scratch / "rules" / "alerts.yml"
    text = alerts_file.read_text()
    broken = text.replace("provider:mailrelay_delivery_errors:ratio_rate5m > 0.05",
                          "provider:mailrelay_delivery_errors:ratio_rate5m > 0.5")
    assert broken != text
    alerts_file.write_text(broken)
    done = subprocess.run([promtool(), "test", "rules", "errors.test.yml"], cwd=scratch / "tests",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "MailrelayProviderErrorRatio" in done.stdout + done.stderr


def test_every_expected_alert_exists() -> None:
    assert {rule["alert"] for rule in alerts()} == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_every_alert_has_severity_summary_description_and_a_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    notes = rule["annotations"]
    assert notes["summary"].strip() and notes["description"].strip()
    url = notes["runbook_url"]
    # One page per alert, named after it: the link goes to the page, not to a section.
    assert url == f"{RUNBOOK_URL}{rule['alert']}.md", url
    page = RUNBOOKS / f"{rule['alert']}.md"
    assert page.is_file(), f"no runbook {page.relative_to(ROOT)}"
    assert page.read_text().startswith(f"# {rule['alert']}\n")


def test_no_alert_names_an_address_or_a_message() -> None:
    for rule in alerts():
        text = yaml.safe_dump(rule).lower()
        for word in ("address", "from_address", "message_id", "recipient", "subject", "email"):
            assert f"$labels.{word}" not in text and f"{word}=" not in text, rule["alert"]


def test_every_alert_and_both_its_severities_are_tested_firing() -> None:
    tested: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                if not expected:
                    silent.add(case["alertname"])
                for alert in expected:
                    tested.add((case["alertname"], alert["exp_labels"]["severity"]))
    defined = {(rule["alert"], rule["labels"]["severity"]) for rule in alerts()}
    assert defined - tested == set(), "alerts never seen firing in a promtool test"
    assert EXPECTED_ALERTS - silent == set(), "alerts never checked to stay quiet"


def test_recording_rules_are_named_level_metric_operations() -> None:
    names = [rule["record"] for rule in rules() if "record" in rule]
    assert len(set(names)) >= 21
    for name in names:
        assert re.fullmatch(r"[a-z_]*:mailrelay_[a-z0-9_]+:[a-z0-9_]+", name), name


def test_the_slo_ratios_cover_every_window() -> None:
    names = {rule["record"] for rule in rules() if "record" in rule}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"provider:mailrelay_slo_errors:ratio_rate{window}" in names
