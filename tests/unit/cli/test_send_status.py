"""`mailrelay send`, `status`, `rejected`: what a user sees, against the real database and broker."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from mailrelay import client
from mailrelay.cli import cli
from mailrelay.cli.output import table
from mailrelay.config import get_settings
from mailrelay.store import outbox
from mailrelay.store.db import get_engine
from mailrelay.store.models import MESSAGES
from mailrelay.store.outbox import Outcome
from mailrelay.store.states import State
from tests.unit.cli.test_oncall import _message


def run(*args: str, stdin: str | bytes | None = None) -> Result:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), input=stdin)
    finally:
        get_settings.cache_clear()


def stored() -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(select(func.count()).select_from(MESSAGES)).scalar_one())


# --- send -----------------------------------------------------------------------------------

def test_a_rejection_prints_its_code_and_detail(sink_account: str, clean_redis: None) -> None:
    result = run("send", "--from", sink_account, "--to", "nope", "--text", "t", "--json")
    assert result.exit_code == 1
    info = json.loads(result.stdout)
    assert (info["state"], info["error_code"]) == ("rejected", "invalid_address")
    assert info["error_detail"] == "to[0]: the address has no @"
    assert result.stderr.strip() == ("mailrelay: rejected: invalid_address: to[0]: the address "
                                     "has no @")
    assert stored() == 1


@pytest.mark.parametrize(("args", "missing"), [
    (["--to", "ada@example.org", "--text", "t"], "--from"),
    (["--from", "SENDER", "--text", "t"], "a recipient"),
    (["--from", "SENDER", "--to", "ada@example.org", "--subject", "s"], "a body"),
])
def test_an_incomplete_message_from_options_is_a_usage_error_and_stores_nothing(
        sink_account: str, args: list[str], missing: str) -> None:
    result = run("send", *[sink_account if a == "SENDER" else a for a in args])
    assert result.exit_code == 2
    assert result.stderr.startswith("mailrelay: missing ") and missing in result.stderr
    assert stored() == 0


def test_a_file_and_message_options_together_are_a_usage_error(sink_account: str,
                                                              tmp_path: Path) -> None:
    message = tmp_path / "m.json"
    message.write_text(json.dumps({"from": sink_account, "to": ["a@example.org"], "text": "t"}))
    result = run("send", "--file", str(message), "--to", "b@example.org", "--subject", "s")
    assert result.exit_code == 2
    assert "--file holds the whole message: leave out --to, --subject" in result.stderr
    assert stored() == 0


@pytest.mark.parametrize(("make", "code", "needle"), [
    (lambda p: p / "absent.json", 66, "cannot read"),
    (lambda p: p, 66, "cannot read"),  # a directory
    (lambda p: (p / "latin1.json").write_bytes(b'{"subject": "caf\xe9"}') and p / "latin1.json",
     2, "not UTF-8"),
])
def test_a_message_file_that_cannot_be_read_says_so_in_one_line(
        clean_db: None, tmp_path: Path, make: object, code: int, needle: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    result = run("send", "--file", str(path))
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1 and needle in result.stderr and str(path) in result.stderr
    assert stored() == 0


def test_a_missing_attachment_is_a_missing_file(sink_account: str, tmp_path: Path) -> None:
    result = run("send", "--from", sink_account, "--to", "a@example.org", "--text", "t",
                 "--attach", str(tmp_path / "report.pdf"))
    assert result.exit_code == 66 and "report.pdf" in result.stderr
    assert stored() == 0


# --- status ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "code"), [(State.SENT, 0), (State.FAILED, 1), (State.QUEUED, 4)])
def test_status_exits_with_the_state(sink_account: str, clean_redis: None, state: State,
                                     code: int) -> None:
    mid = _message(sink_account, state)
    assert run("status", mid, "--json").exit_code == code
    assert run("status", mid).exit_code == code


def test_status_of_a_rejected_message_exits_1(sink_account: str, clean_redis: None) -> None:
    mid = json.loads(run("send", "--from", sink_account, "--to", "x", "--text", "t",
                         "--json").stdout)["id"]
    assert run("status", mid).exit_code == 1


def test_status_waits_until_the_message_ends(sink_account: str, clean_redis: None) -> None:
    mid = _message(sink_account, State.QUEUED)
    claim = outbox.claim(mid, worker="w", lease_seconds=60)
    assert claim is not None
    # Sent a moment after `status` starts: without a wait it would see `sending` (exit 4).
    later = threading.Timer(0.5, lambda: outbox.finish(
        claim, Outcome(State.SENT, provider_message_id="p"), latency_ms=1))
    later.start()
    try:
        result = run("status", mid, "--wait", "60", "--json")
    finally:
        later.join(30)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "sent"


def test_status_still_in_flight_after_the_wait_exits_4(sink_account: str,
                                                       clean_redis: None) -> None:
    mid = _message(sink_account, State.QUEUED)
    result = run("status", mid, "--wait", "0.3", "--json")
    assert result.exit_code == 4 and json.loads(result.stdout)["state"] == "queued"


def test_client_status_is_what_status_json_prints(sink_account: str, clean_redis: None) -> None:
    mid = _message(sink_account, State.FAILED)
    printed = json.loads(run("status", mid, "--json").stdout)
    assert printed == client.status(mid)
    assert printed["attempts"] and printed["history"] and printed["error_code"]
    assert client.status("00000000-0000-0000-0000-000000000000") is None


def test_status_counts_what_html_sanitizing_removed_in_words(sink_account: str,
                                                             clean_redis: None) -> None:
    one = client.submit({"from": sink_account, "to": ["a@example.org"],
                         "html": "<p>hi</p><script>x()</script>"})
    assert (client.status(one.message_id) or {})["html_removed"] == 1
    assert "sanitized, 1 thing removed" in run("status", one.message_id).stdout


# --- rejected, and tables that show what they are given -------------------------------------

def test_rejected_lists_what_intake_refused(sink_account: str, clean_redis: None) -> None:
    for args in (["--to", "nope"], ["--to", "a@example.org", "--text", "t"]):
        run("send", "--from", sink_account, "--text", "t", *args)
    rows = json.loads(run("rejected", "--json").stdout)
    assert [(r["error_code"], r["error_detail"]) for r in rows] == [
        ("invalid_address", "to[0]: the address has no @")]
    assert "invalid_address" in run("rejected", "--code", "invalid_address").stdout
    assert json.loads(run("rejected", "--code", "missing_body", "--json").stdout) == []
    assert run("rejected", "--code", "invalid_adress").exit_code == 2  # did you mean


def test_tables_show_brackets_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    table([{"detail": "[sink] provider_rejected: [bold]no[/bold]"}], ["detail"], title="[t]")
    out = capsys.readouterr().out
    assert "[sink] provider_rejected: [bold]no[/bold]" in out and "[t]" in out


def test_failed_shows_a_provider_prefixed_detail(sink_account: str, clean_redis: None) -> None:
    mid = _message(sink_account, State.QUEUED)
    claim = outbox.claim(mid, worker="w", lease_seconds=60)
    assert claim is not None
    outbox.finish(claim, Outcome(State.FAILED, code="provider_rejected",
                                 detail="[sink] provider_rejected: refused"), latency_ms=1)
    assert "[sink] provider_rejected: refused" in run("failed").stdout
    assert "[sink] provider_rejected: refused" in run("status", mid).stdout
