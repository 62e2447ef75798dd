from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from mailrelay.cli import cli
from mailrelay.emulator import EmulatorClient
from mailrelay.emulator.client import EmulatorError

STARTUP_TIMEOUT = 30


class Foreground:
    def __init__(self, process: subprocess.Popen[str], lines: list[str]) -> None:
        self.process = process
        self.lines = lines
        self.url = lines[0].removeprefix("emulator: ")
        self.ca = lines[1].removeprefix("ca: ")
        self.bundle = lines[2].removeprefix("bundle: ")


@pytest.fixture
def foreground(tmp_path: Path) -> Iterator[Foreground]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mailrelay.cli", "emulator", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while len(lines) < 4 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        assert len(lines) == 4, lines
        yield Foreground(process, lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        process.stdout.close()


def test_foreground_prints_its_lines_and_stops_on_sigterm(foreground: Foreground, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert foreground.lines == [
        f"emulator: {foreground.url}", f"ca: {state / 'ca.pem'}", f"bundle: {state / 'bundle.pem'}",
        f"export REQUESTS_CA_BUNDLE={state / 'bundle.pem'}"]
    assert foreground.url.startswith("https://127.0.0.1:")
    assert requests.get(f"{foreground.url}/_emulator/stats", verify=foreground.bundle, timeout=10).ok
    foreground.process.send_signal(signal.SIGTERM)
    assert foreground.process.wait(10) == 0
    assert (state / "ca.pem").exists()  # an explicit state dir is kept for the next start


def test_inject_stats_and_reset_commands(foreground: Foreground) -> None:
    runner = CliRunner()
    env = {"REQUESTS_CA_BUNDLE": foreground.bundle}
    result = runner.invoke(cli, ["emulator", "inject", "--url", foreground.url, "--endpoint", "gmail.send",
                                 "--status", "429", "--count", "2", "--retry-after", "5"], env=env)
    assert result.exit_code == 0, result.output
    assert "gmail.send" in result.output

    control = EmulatorClient(foreground.url, verify=foreground.ca)
    [rule] = control.faults()
    assert (rule["status"], rule["count"], rule["retry_after"]) == (429, 2, 5)

    result = runner.invoke(cli, ["emulator", "stats", "--url", foreground.url, "--ca", foreground.ca,
                                 "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["requests"]["emulator.inject"] == 1 and stats["max_concurrency"]["*"] >= 1
    result = runner.invoke(cli, ["emulator", "stats", "--url", foreground.url, "--ca", foreground.ca])
    assert result.exit_code == 0 and "emulator.inject" in result.output

    result = runner.invoke(cli, ["emulator", "reset", "--url", foreground.url, "--ca", foreground.ca])
    assert result.exit_code == 0, result.output
    assert control.faults() == []


def test_cli_usage_errors_and_unreachable_emulator(foreground: Foreground) -> None:
    runner = CliRunner()
    base = ["emulator", "inject", "--url", foreground.url, "--ca", foreground.ca, "--endpoint", "gmail.send"]
    assert runner.invoke(cli, base).exit_code == 2
    both = [*base, "--status", "500", "--count", "1", "--probability", "0.5"]
    assert runner.invoke(cli, both).exit_code == 2
    result = runner.invoke(cli, [*base, "--status", "500", "--after-send", "--endpoint", "gmail.list"])
    assert result.exit_code == 1 and "after_send" in result.output

    port = int(foreground.url.rsplit(":", 1)[1])
    foreground.process.send_signal(signal.SIGINT)
    assert foreground.process.wait(10) == 0
    gone = f"https://127.0.0.1:{port}"
    result = runner.invoke(cli, ["emulator", "stats", "--url", gone, "--ca", foreground.ca])
    assert result.exit_code == 69


@pytest.mark.parametrize(("endpoint", "hint"), [("graph.send", "did you mean 'graph.sendmail'?"),
                                                ("bogus", "endpoints: gmail.list")])
def test_inject_refuses_an_endpoint_no_route_has(endpoint: str, hint: str) -> None:
    result = CliRunner().invoke(cli, ["emulator", "inject", "--url", "https://127.0.0.1:9",
                                      "--endpoint", endpoint, "--status", "500"])
    assert result.exit_code == 2 and hint in result.output


def test_the_control_api_refuses_an_unknown_endpoint_too(foreground: Foreground) -> None:
    control = EmulatorClient(foreground.url, verify=foreground.ca)
    with pytest.raises(EmulatorError, match=r"did you mean 'gmail\.send'"):
        control.inject(endpoint="gmail.sned", status=500)
    control.inject(endpoint="graph.sendmail", status=500)  # Microsoft's names are known too
    assert [rule["endpoint"] for rule in control.faults()] == ["graph.sendmail"]


def test_help_names_both_providers_and_every_injectable_endpoint() -> None:
    from mailrelay.emulator.server import injectable_endpoints

    text = " ".join(CliRunner().invoke(cli, ["emulator", "--help"]).output.split())
    assert "Google" in text and "Microsoft" in text
    inject_help = " ".join(CliRunner().invoke(cli, ["emulator", "inject", "--help"]).output.split())
    assert all(name in inject_help for name in injectable_endpoints())
    assert {"gmail.send", "graph.sendmail", "ms.token"} <= set(injectable_endpoints())


def test_a_closed_emulator_port_is_one_line_and_69(tmp_path: Path) -> None:
    from tests.unit.cli.test_failures import closed_port

    url = f"https://127.0.0.1:{closed_port()}"
    result = CliRunner().invoke(cli, ["emulator", "stats", "--url", url])
    assert result.exit_code == 69
    assert result.stderr == f"mailrelay: emulator unavailable at {url}: Connection refused\n"
    missing = tmp_path / "ca.pem"
    result = CliRunner().invoke(cli, ["emulator", "reset", "--url", url, "--ca", str(missing)])
    assert (result.exit_code, result.stderr) == (66, f"mailrelay: cannot read {missing}: no such file\n")
