"""`mailrelay rollout ...` against the real database (and broker, for rerouted messages)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailrelay.auth import accounts
from mailrelay.cli import cli
from mailrelay.config import get_settings
from mailrelay.intake import take_in
from mailrelay.rollout import gate
from mailrelay.rollout.bucket import bucket
from mailrelay.store import outbox, rollouts
from tests.unit.cli.conftest import snapshot

RELAY = "relay@example.net"
SENDERS = [f"user{i}@example.com" for i in range(12)]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    get_settings.cache_clear()
    gate.forget()
    try:
        return CliRunner().invoke(cli, ["rollout", *args],
                                  env={"MAILRELAY_OPERATOR": "alice", **(env or {})})
    finally:
        get_settings.cache_clear()
        gate.forget()


def ok(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def setup(clean_db: None, clean_redis: None) -> None:
    accounts.add("smtp", RELAY, tenant="smtp+insecure://127.0.0.1:2525")
    for address in SENDERS:
        accounts.add("sink", address)


def test_set_creates_a_rollout_with_defaults_and_status_shows_the_contract(setup: None) -> None:
    [created] = ok("set", "sink", "--fallback", RELAY, "--internal-domains", "Example.org,corp.example",
                   "--reason", "INC-7 move to sink")
    assert (created["provider"], created["mode"], created["state"], created["percent"]) == (
        "sink", "enforce", "running", 1)
    assert created["ladder"] == [1, 5, 10, 25, 50, 100]
    assert (created["dwell"], created["window"], created["consecutive_successes"],
            created["failure_limit"], created["error_warn"], created["error_critical"]) == (
        600, 300, 5, 2, 0.01, 0.05)
    assert "invalid_recipient" not in created["error_codes"]
    [status] = ok("status")
    assert {"provider", "mode", "state", "percent", "fallback", "internal_domains",
            "last_decision"} <= set(status)
    assert status["fallback"] == RELAY
    assert status["internal_domains"] == ["example.org", "corp.example"]
    assert status["last_decision"]["decision"] == "create"
    assert status["last_decision"]["reason"] == "INC-7 move to sink"
    assert status["last_decision"]["at"]
    [decision] = ok("history", "sink")
    assert (decision["actor"], decision["percent_after"]) == ("alice", 1)


def test_set_changes_only_what_is_given_and_records_it(setup: None) -> None:
    ok("set", "sink", "--reason", "start")
    [changed] = ok("set", "sink", "--percent", "25", "--ladder", "25,50,100", "--dwell", "30",
                   "--window", "20", "--error-critical", "0.1", "--latency-p95", "3",
                   "--min-rate", "0.5", "--consecutive-successes", "2", "--failure-limit", "3",
                   "--error-codes", "provider_unavailable,provider_timeout", "--salt", "new",
                   "--mode", "dry_run", "--reason", "tune")
    assert (changed["percent"], changed["ladder"], changed["dwell"], changed["window"],
            changed["error_critical"], changed["latency_p95"], changed["min_rate"],
            changed["consecutive_successes"], changed["failure_limit"], changed["error_codes"],
            changed["salt"], changed["mode"], changed["version"]) == (
        25, [25, 50, 100], 30, 20, 0.1, 3, 0.5, 2, 3,
        ["provider_unavailable", "provider_timeout"], "new", "dry_run", 2)
    last = ok("history", "sink")[0]
    assert (last["decision"], last["percent_before"], last["percent_after"], last["reason"]) == (
        "set", 1, 25, "tune")
    assert last["inputs"]["window_seconds"] == 20
    [cleared] = ok("set", "sink", "--fallback", "none", "--internal-domains", "none",
                   "--reason", "clear")
    assert (cleared["fallback"], cleared["internal_domains"]) == (None, [])


@pytest.mark.parametrize("args", [
    ["--percent", "101"], ["--percent", "0.001"], ["--ladder", "5,1"], ["--ladder", "0,5"],
    ["--error-warn", "0.2", "--error-critical", "0.1"], ["--fallback", "nobody@example.com"],
    ["--fallback", SENDERS[0]], ["--error-codes", "no_such_code"], ["--window", "2"],
    ["--internal-domains", "not a domain"], ["--consecutive-successes", "0"],
])
def test_set_refuses_bad_values_with_a_usage_error(setup: None, args: list[str]) -> None:
    result = run("set", "sink", *args, "--reason", "x")
    assert result.exit_code == 2, result.output
    assert rollouts.get("sink") is None


def test_every_change_needs_a_reason(setup: None) -> None:
    assert run("set", "sink").exit_code == 2
    assert run("set", "sink", "--reason", "  ").exit_code == 2
    assert rollouts.get("sink") is None


def test_pause_resume_rollback_and_remove(setup: None) -> None:
    ok("set", "sink", "--percent", "25", "--fallback", RELAY, "--reason", "start")
    assert run("pause", "sink", "--reason", "freeze").exit_code == 0
    assert ok("status", "sink")[0]["state"] == "paused"
    again = run("pause", "sink", "--reason", "freeze")
    assert again.exit_code == 1 and "paused" in again.output
    assert run("resume", "sink", "--reason", "go").exit_code == 0
    [running] = ok("status", "sink")
    assert (running["state"], running["percent"]) == ("running", 25)

    queued = []
    for address in SENDERS:
        accepted = take_in({"from": address, "to": ["r@example.org"], "subject": "s", "text": "t"},
                           request_id=None, actor="test")
        if accepted.provider == "sink":
            queued.append(accepted.result.message_id)
    assert queued
    rolled = ok("rollback", "sink", "--reason", "errors")
    refused = run("set", "sink", "--percent", "50", "--reason", "sneak back")
    assert refused.exit_code == 1 and "resume" in refused.output
    assert (rolled["state"], rolled["percent"], rolled["rerouted"]) == ("aborted", 0, len(queued))
    for mid in queued:
        info = outbox.status(mid)
        assert info is not None and (info["provider"], info["via"]) == ("smtp", RELAY)
        assert info["route"]["decision"] == "rerouted"
        assert any(h["action"] == "rerouted" and h["actor"] == "alice" for h in info["history"])
    assert run("resume", "sink", "--reason", "fixed").exit_code == 0
    assert ok("status", "sink")[0]["percent"] == 1  # from aborted: the ladder's first step

    assert run("remove", "sink", "--reason", "done").exit_code == 2  # no terminal, no --yes
    removed = run("remove", "sink", "--reason", "done", "--yes")
    assert removed.exit_code == 0, removed.output
    assert ok("status") == []
    assert run("status", "sink").exit_code == 3
    assert [d["decision"] for d in ok("history", "sink")][:3] == ["remove", "resume", "rollback"]


def test_unknown_rollout_is_not_found(setup: None) -> None:
    for args in (["pause", "sink", "--reason", "x"], ["rollback", "sink", "--reason", "x"],
                 ["evaluate", "sink"], ["resume", "sink", "--reason", "x"]):
        assert run(*args).exit_code == 3, args


def test_which_agrees_with_the_gate(setup: None) -> None:
    ok("set", "sink", "--percent", "25", "--fallback", RELAY, "--salt", "w",
       "--internal-domains", "example.org", "--reason", "start")
    for address in SENDERS:
        route = ok("which", address, "--to", "Someone <x@example.org>")
        expected = "admitted" if bucket("w", address) < 2500 else "fallback"
        assert (route["decision"], route["bucket"]) == (expected, bucket("w", address))
        assert route["provider"] == ("sink" if expected == "admitted" else "smtp")
        accepted = take_in({"from": address, "to": ["x@example.org"], "subject": "s", "text": "t"},
                           request_id=None, actor="test")
        assert accepted.provider == route["provider"]
        shown = CliRunner().invoke(cli, ["status", accepted.result.message_id])
        assert f"route: {route['decision']}" in shown.output
        assert (f"through {RELAY}" in shown.output) == (route["decision"] == "fallback")
    outside = ok("which", SENDERS[0], "--to", "x@elsewhere.example")
    assert outside["decision"] == "fallback" and outside["recipients_internal"] is False
    unchecked = ok("which", SENDERS[0])
    assert unchecked["recipients_internal"] is None
    assert run("which", "nobody@example.com").exit_code == 3
    relay = ok("which", RELAY)
    assert (relay["rollout"], relay["decision"], relay["provider"]) == (False, "admitted", "smtp")


def test_evaluate_without_prometheus_holds_and_dry_run_writes_nothing(setup: None) -> None:
    ok("set", "sink", "--reason", "start")
    [dry] = ok("evaluate", "--dry-run")
    assert (dry["provider"], dry["decision"], dry["applied"]) == ("sink", "hold", False)
    assert set(dry["inputs"]) >= {"traffic", "error_ratio", "latency_p95"}
    assert (dry["percent_before"], dry["percent_after"]) == (1, 1)
    assert "MAILRELAY_PROMETHEUS_URL" in dry["reason"]
    assert ok("status", "sink")[0]["version"] == 1
    [applied] = ok("evaluate", "sink")
    assert (applied["decision"], applied["applied"]) == ("hold", True)
    [status] = ok("status", "sink")
    assert (status["version"], status["query_errors"], status["last_decision"]["decision"]) == (
        2, 1, "hold")
    assert status["last_evaluated_at"]


# --- --dry-run: the real command's checks and exit codes, nothing written -------------------

VOLATILE = ("dry_run", "version", "step_started_at", "last_decision", "salt")


def _same(dry: dict[str, Any], real: dict[str, Any]) -> None:
    """A dry run's object is the real one's, but for what only writing decides."""
    assert dry["dry_run"] is True
    assert ({k: v for k, v in dry.items() if k not in VOLATILE}
            == {k: v for k, v in real.items() if k not in VOLATILE})


def _both(*args: str) -> Result:
    """A dry run, after checking the real command exits with the same code and words."""
    dry, real = run(*args, "--dry-run"), run(*args)
    assert dry.exit_code == real.exit_code, (dry.output, real.output)
    assert dry.output == real.output
    return dry


def test_set_dry_run_prints_the_rollout_it_would_create_or_change(setup: None) -> None:
    before = snapshot()
    [would] = ok("set", "sink", "--percent", "25", "--fallback", RELAY, "--internal-domains",
                 "Example.ORG", "--reason", "start", "--dry-run")
    assert snapshot() == before and rollouts.get("sink") is None
    [created] = ok("set", "sink", "--percent", "25", "--fallback", RELAY, "--internal-domains",
                   "Example.ORG", "--reason", "start")
    _same(would, created)
    before = snapshot()
    [would] = ok("set", "sink", "--percent", "50", "--internal-domains", "none", "--fallback",
                 "none", "--dwell", "60", "--reason", "more", "--dry-run")
    assert (would["percent"], would["internal_domains"], would["fallback"]) == (50, [], None)
    assert snapshot() == before
    [changed] = ok("set", "sink", "--percent", "50", "--internal-domains", "none", "--fallback",
                   "none", "--dwell", "60", "--reason", "more")
    _same(would, changed)


@pytest.mark.parametrize("args", [
    ["--fallback", "nobody@example.com"],  # 2: no such account
    ["--percent", "101"],  # 2
    ["--ladder", "5,1"],  # 2
    [],  # 1: nothing to change
])
def test_set_dry_run_refuses_what_set_refuses(setup: None, args: list[str]) -> None:
    ok("set", "sink", "--percent", "25", "--reason", "start")
    before = snapshot()
    assert _both("set", "sink", *args, "--reason", "r").exit_code in (1, 2)
    assert snapshot() == before


def test_pause_resume_remove_dry_runs_change_nothing_and_fail_as_the_real_ones(
        setup: None) -> None:
    ok("set", "sink", "--percent", "25", "--fallback", RELAY, "--reason", "start")
    before = snapshot()
    # Refusals: the same code and the same words as the real command.
    assert "only a paused or aborted one resumes" in _both("resume", "sink", "--reason", "x").output
    assert _both("pause", "gmail", "--reason", "x").exit_code == 3
    assert _both("pause", "sink").exit_code == 2  # --reason stays required
    assert _both("pause", "sink", "--reason", "  ").exit_code == 2
    assert _both("remove", "gmail", "--reason", "x", "--yes").exit_code == 3
    assert snapshot() == before
    assert run("remove", "sink", "--reason", "x", "--dry-run").exit_code == 2  # no --yes, no tty
    assert ok("pause", "sink", "--reason", "freeze", "--dry-run") == {
        "provider": "sink", "state": "paused", "percent": 25, "dry_run": True}
    words = run("pause", "sink", "--reason", "freeze", "--dry-run").output
    assert words == "would be sink: paused at 25% (dry run; nothing changed)\n"
    assert ok("remove", "sink", "--reason", "done", "--yes", "--dry-run") == {
        "provider": "sink", "state": "removed", "percent": 25, "dry_run": True}
    assert snapshot() == before
    assert ok("status", "sink")[0]["state"] == "running"
    # Paused for real, resume previews what the real resume then does.
    ok("pause", "sink", "--reason", "freeze")
    assert _both("pause", "sink", "--reason", "x").exit_code == 1  # paused already
    before = snapshot()
    would = ok("resume", "sink", "--reason", "go", "--dry-run")
    assert snapshot() == before
    _same(would, ok("resume", "sink", "--reason", "go"))


def test_rollback_dry_run_counts_what_would_move_and_moves_nothing(setup: None) -> None:
    ok("set", "sink", "--percent", "50", "--fallback", RELAY, "--reason", "start")
    queued = [take_in({"from": address, "to": ["r@example.org"], "subject": "s", "text": "t"},
                      request_id=None, actor="test") for address in SENDERS]
    waiting = sum(1 for accepted in queued if accepted.provider == "sink")
    assert waiting
    before = snapshot()  # the broker's queues too: a dry run publishes nothing
    would = ok("rollback", "sink", "--reason", "errors", "--dry-run")
    assert would == {"provider": "sink", "state": "aborted", "percent": 0, "fallback": RELAY,
                     "rerouted": waiting, "unfit": 0, "not_enqueued": 0, "dry_run": True}
    words = run("rollback", "sink", "--reason", "errors", "--dry-run").output
    assert f"would roll back to 0% (aborted) and move {waiting} waiting messages" in words
    assert snapshot() == before
    rolled = ok("rollback", "sink", "--reason", "errors")
    assert rolled == {k: v for k, v in would.items() if k != "dry_run"}
    assert snapshot() != before
    assert _both("rollback", "gmail", "--reason", "x").exit_code == 3
