"""`mailrelay scenarios`: the catalogue agrees with the alert rules, bad input is a clear
error, and a scenario's pauses are undone."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from click.testing import CliRunner

from mailrelay.cli import cli
from mailrelay.cli import scenarios as module

ROOT = Path(__file__).resolve().parents[3]


def _alerts() -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / "monitoring" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found |= {(r["alert"], r["labels"]["severity"]) for r in group["rules"] if "alert" in r}
    return found


def test_every_scenario_names_alerts_that_exist() -> None:
    listed = json.loads(CliRunner().invoke(cli, ["scenarios", "list", "--json"]).output)
    names = {row["name"] for row in listed}
    assert {"error-rate-warning", "error-rate-critical", "latency-critical", "token-refresh-failures",
            "backlog", "controller-stalled", "provider-outage", "validation-spike",
            "sanitization-spike"} == names
    for scenario in module.catalog():
        assert scenario.alerts and set(scenario.alerts) <= _alerts(), scenario.name
        assert scenario.faults or scenario.pause or scenario.message is not module._message


def test_an_unknown_scenario_is_a_usage_error() -> None:
    done = CliRunner().invoke(cli, ["scenarios", "run", "error-rate"])
    assert done.exit_code == 2
    assert "no scenario 'error-rate'" in done.output and "error-rate-warning" in done.output


def test_a_stack_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "stack.json"
    bad.write_text("{not json")
    done = CliRunner().invoke(cli, ["scenarios", "run", "backlog", "--stack", str(bad)])
    assert done.exit_code == 2 and "not a stack file" in done.output
    bad.write_text(json.dumps({"env": {}}))
    done = CliRunner().invoke(cli, ["scenarios", "run", "backlog", "--stack", str(bad)])
    assert done.exit_code == 2 and "emulator, env, senders, serves" in done.output


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]


def test_paused_processes_are_resumed_on_the_way_out() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    try:
        ctx = module.Context({"serves": {"mailrelay.gmail": [child.pid]}, "senders": {}},
                             "gmail", emulator=None)
        scenario = module.Scenario("t", "pause only", (("MailrelayQueueWithoutWorker", "critical"),),
                                   "", pause=("provider",))
        try:
            with module.applied(scenario, ctx):
                time.sleep(0.2)
                assert _state(child.pid) == "T"  # stopped
                raise KeyboardInterrupt  # Ctrl-C in the middle
        except KeyboardInterrupt:
            pass
        time.sleep(0.2)
        assert _state(child.pid) in "SR"
    finally:
        child.kill()
        child.wait()
