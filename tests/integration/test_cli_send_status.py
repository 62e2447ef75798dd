"""`mailrelay send` and `mailrelay status` as a script sees them: a real process, exit codes, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.processes import Worker

pytestmark = pytest.mark.integration


def mailrelay(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


def status(message_id: str) -> dict[str, Any]:
    out = mailrelay("status", message_id, "--json")
    info: dict[str, Any] = json.loads(out.stdout)
    # The exit code says the state: 0 sent, 1 failed or rejected, 4 still in flight.
    expected = {"sent": 0, "failed": 1, "rejected": 1}.get(info["state"], 4)
    assert out.returncode == expected, out.stderr
    return info


def test_send_from_flags_waits_and_status_shows_the_history(
        sink_account: str, clean_redis: None, start_worker: Callable[..., Worker],
        tmp_path: Path) -> None:
    start_worker("mailrelay.intake,mailrelay.sink", concurrency=2)
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    out = mailrelay("send", "--from", sink_account, "--to", "Ada <ada@example.org>",
                    "--subject", "quarterly", "--text", "see attached", "--attach", str(report),
                    "--wait", "60", "--json")
    assert out.returncode == 0, out.stderr
    sent = json.loads(out.stdout)
    assert (sent["state"], sent["error_code"]) == ("sent", None)

    info = status(sent["id"])
    assert (info["state"], info["attempt_count"], info["provider"]) == ("sent", 1, "sink")
    assert info["message_id_header"].startswith("<") and info["sent_at"]
    assert [(a["number"], a["outcome"]) for a in info["attempts"]] == [(1, "sent")]
    transitions = [(h["action"], h["from_state"], h["to_state"]) for h in info["history"]]
    assert transitions[0] == ("intake", None, "queued")
    assert transitions[-1][2] == "sent"
    assert ("claim", "queued", "sending") in transitions
    # The history names states and actors; nothing of the message itself is shown.
    assert "see attached" not in out.stdout + json.dumps(info)
    assert "ada@example.org" not in json.dumps(info)

    human = mailrelay("status", sent["id"])
    assert human.returncode == 0 and "sent" in human.stdout and "history" in human.stdout


def test_send_from_a_file_and_the_exit_codes_scripts_rely_on(sink_account: str, clean_db: None,
                                                            tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"from": sink_account, "to": ["ada@example.org"], "subject": "s",
                                "text": "t"}))
    queued = mailrelay("send", "--file", str(good))
    assert queued.returncode == 0, queued.stderr
    assert status(queued.stdout.strip())["state"] == "queued"

    # A rejected message is stored with its code and exits 1.
    rejected = mailrelay("send", "--file", "-", "--json",
                         stdin=json.dumps({"from": sink_account, "to": ["nope"], "text": "t"}))
    assert rejected.returncode == 1
    stored = json.loads(rejected.stdout)
    assert status(stored["id"])["error_code"] == "invalid_address"
    assert "invalid_address" in rejected.stderr

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    usage = mailrelay("send", "--file", str(broken))
    assert usage.returncode == 2 and "not valid JSON" in usage.stderr
    assert mailrelay("send", "--to", "x@example.org").returncode == 2

    missing = mailrelay("status", "00000000-0000-0000-0000-000000000000", "--json")
    assert missing.returncode == 3 and "no message" in missing.stderr
