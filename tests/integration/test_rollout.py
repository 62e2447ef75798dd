"""Rollouts end to end: a real Prometheus scraping real workers' /metrics, real traffic
through the emulator with injected faults, an SMTP relay (aiosmtpd) as the fallback.

Short settings keep each test under a minute: scrape every second, windows of 6-12 s,
dwell of a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from mailrelay.auth import accounts
from mailrelay.celery_app import app
from mailrelay.cli import cli
from mailrelay.client import send
from mailrelay.config import get_settings
from mailrelay.devstack import free_port
from mailrelay.rollout import controller, gate, manage
from mailrelay.rollout.bucket import bucket
from mailrelay.rollout.manage import Changes
from mailrelay.store import outbox, rollouts
from mailrelay.tasks.control import ROLLOUT_TASK
from mailrelay.tasks.routing import enqueue_delivery
from tests.integration.conftest import UNLIMITED, EmulatorHandle
from tests.integration.helpers import query, scalar, wait_for
from tests.integration.test_smtp import Mailbox
from tests.processes import ROOT, Worker
from tests.prometheus import Prometheus, SlowProxy

pytestmark = pytest.mark.integration

RELAY = "relay@corp.example"
SALT = "rollout-it"


# -- fixtures --------------------------------------------------------------------------
@dataclass
class Relay:
    mailbox: Mailbox
    port: int


@pytest.fixture
def relay(clean_db: None) -> Iterator[Relay]:
    """The organization's SMTP relay, and the account that sends through it."""
    mailbox = Mailbox()
    port = free_port()
    server = Controller(mailbox, hostname="127.0.0.1", port=port, server_hostname="localhost")
    server.start()
    accounts.add("smtp", RELAY, tenant=f"smtp+insecure://127.0.0.1:{port}")
    yield Relay(mailbox, port)
    server.stop()


def senders_in(low: int, high: int, count: int, prefix: str = "s") -> list[str]:
    """``count`` sender addresses whose bucket under SALT is in [low, high)."""
    found = []
    for i in range(100_000):
        address = f"{prefix}{i}@corp.example"
        if low <= bucket(SALT, address) < high:
            found.append(address)
            if len(found) == count:
                return found
    raise AssertionError("no such senders")


@pytest.fixture
def gmail_senders(emulator: EmulatorHandle, clean_db: None, clean_redis: None,
                  secret_key: str) -> Callable[[list[str]], None]:
    """Register Gmail accounts with the emulator's grants."""
    from mailrelay.auth.credentials import forget

    emulator.client.register_client("rollout-client", "rollout-secret")

    def register(addresses: list[str]) -> None:
        for address in addresses:
            accounts.add("gmail", address, client_id="rollout-client",
                         client_secret="rollout-secret",
                         refresh_token=emulator.client.grant("rollout-client", address),
                         rate_limit_per_minute=UNLIMITED)
        forget()

    return register


@pytest.fixture
def use_prometheus(prometheus: Prometheus, monkeypatch: pytest.MonkeyPatch) -> Iterator[Prometheus]:
    """The controller in this process asks the test's Prometheus."""
    monkeypatch.setenv("MAILRELAY_PROMETHEUS_URL", prometheus.url)
    get_settings.cache_clear()
    gate.forget()
    yield prometheus
    get_settings.cache_clear()
    gate.forget()


def metrics_worker(start_worker: Callable[..., Worker], tmp_path: Path, prometheus: Prometheus,
                   queues: str, **kwargs: Any) -> tuple[Worker, int]:
    """A worker serving /metrics, scraped by ``prometheus``; with its port."""
    port = free_port()
    directory = tmp_path / f"metrics-{port}"
    directory.mkdir()
    env = {"MAILRELAY_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(directory),
           **kwargs.pop("extra_env", {})}
    worker = start_worker(queues, extra_env=env, **kwargs)
    prometheus.scrape(port)
    return worker, port


def set_rollout(**changes: Any) -> None:
    policy = {k: changes.pop(k) for k in list(changes) if k in manage.POLICY_FIELDS}
    manage.set_rollout("gmail", Changes(salt=SALT, policy=policy, **changes), actor="test",
                       reason="test")


def row() -> rollouts.RolloutRow:
    found = rollouts.get("gmail")
    assert found is not None
    return found


def evaluate() -> dict[str, Any]:
    """One controller run in this process, as `rollout evaluate --json` shows it."""
    [result] = controller.evaluate("gmail", enqueue=enqueue_delivery)
    return result.as_dict()


def decisions() -> list[str]:
    return [d["decision"] for d in reversed(rollouts.decisions("gmail", limit=1000))]


@dataclass
class Traffic:
    """Messages sent in this process (intake in-process, delivery by the workers) from
    ``senders`` at about ``rate`` per second until stopped."""

    senders: list[str]
    rate: float
    ids: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(1 / self.rate):
            sender = self.senders[n % len(self.senders)]
            try:
                self.ids.append(send({"from": sender, "to": [f"rcpt{n}@example.org"],
                                      "subject": f"m{n}", "text": "hello"}))
            except Exception as err:  # surfaced by stop()
                self.errors.append(err)
                return
            n += 1

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(30)
        assert not self.errors, self.errors
        return list(self.ids)

    def __exit__(self, *exc: object) -> None:
        self.stop()


TRAFFIC = 'sum(rate(mailrelay_deliveries_total{provider="gmail"}[%ds]))'


def all_sent(ids: list[str], timeout: float = 120) -> None:
    def done() -> bool:
        states = Counter(r.state for r in query("SELECT state FROM messages WHERE id = ANY(:ids)",
                                                ids=ids))
        return states.get("sent", 0) == len(ids)

    wait_for(done, timeout, f"{len(ids)} messages sent")


def delivered_once(ids: list[str], emulator: EmulatorHandle, relay: Relay) -> dict[str, str]:
    """Each message's Message-ID arrived exactly once, at Gmail or at the relay; where."""
    headers = {r.id: r.rfc822_message_id for r in query(
        "SELECT id, rfc822_message_id FROM messages WHERE id = ANY(:ids)", ids=ids)}
    at_gmail = Counter(m["message_id"] for m in emulator.client.messages())
    at_relay = Counter(_header(r.content, "Message-ID") for r in relay.mailbox.received)
    where = {}
    for mid, header in headers.items():
        seen = at_gmail[header] + at_relay[header]
        assert seen == 1, (mid, at_gmail[header], at_relay[header])
        where[mid] = "gmail" if at_gmail[header] else "smtp"
    return where


def _header(raw: bytes, name: str) -> str:
    match = re.search(rb"^" + name.encode() + rb":\s*(.+?)\r?$", raw, re.MULTILINE | re.IGNORECASE)
    return match.group(1).decode().strip() if match else ""


# -- the controller ---------------------------------------------------------------------
def test_healthy_traffic_promotes_step_by_step_to_complete(
        emulator: EmulatorHandle, gmail_senders: Callable[[list[str]], None],
        use_prometheus: Prometheus, start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    [sender] = senders_in(0, 1000, 1)
    gmail_senders([sender])
    set_rollout(percent_bp=1000, ladder=(1000, 5000, 10_000), dwell_seconds=3, window_seconds=6,
                consecutive_successes=2, min_rate=0.5, latency_p95=5.0)
    metrics_worker(start_worker, tmp_path, use_prometheus, "mailrelay.gmail", concurrency=2)
    # The controller runs as beat runs it: the task, in a prefork control worker whose
    # /metrics is scraped too (its gauges come from whichever child ran it).
    _, control_port = metrics_worker(start_worker, tmp_path, use_prometheus, "mailrelay.control",
                                  concurrency=2,
                                  extra_env={"MAILRELAY_PROMETHEUS_URL": use_prometheus.url})
    use_prometheus.wait_for_targets()
    with Traffic([sender], rate=6):
        use_prometheus.wait_for(TRAFFIC % 6, lambda v: v is not None and v > 1)
        deadline = time.monotonic() + 120
        while row().state != "complete":
            assert time.monotonic() < deadline, decisions()
            version = row().version
            app.send_task(ROLLOUT_TASK, queue="mailrelay.control")
            wait_for(lambda v=version: row().version > v, 30, "an evaluation")  # type: ignore[misc]
            time.sleep(1)
    made = [d for d in decisions() if d != "hold"]
    assert made == ["create", "promote", "promote", "complete"], decisions()
    history = list(reversed(rollouts.decisions("gmail", limit=1000)))
    promotions = [d for d in history if d["decision"] in ("promote", "complete")]
    assert [(d["percent_before"], d["percent_after"]) for d in promotions] == [
        (1000, 5000), (5000, 10_000), (10_000, 10_000)]
    for promotion in promotions:
        assert promotion["inputs"]["traffic"] > 0.5
        assert promotion["inputs"]["error_ratio"] == 0
    assert row().percent_bp == 10_000

    # One series per gauge from the prefork worker, with the last value written.
    body = requests.get(f"http://127.0.0.1:{control_port}/metrics", timeout=5).text
    percent = re.findall(r'^mailrelay_rollout_percent\{provider="gmail"\} (\S+)$', body, re.M)
    assert percent == ["100.0"], body[:3000]
    stamps = re.findall(r'^mailrelay_rollout_last_evaluation_timestamp_seconds\{[^}]*\} (\S+)$',
                        body, re.M)
    assert len(stamps) == 1 and time.time() - float(stamps[0]) < 60
    assert 'pid="' not in body
    promoted = re.findall(
        r'^mailrelay_rollout_decisions_total\{decision="promote",provider="gmail"\} (\S+)$', body, re.M)
    assert promoted == ["2.0"]
    use_prometheus.wait_for('mailrelay_rollout_percent{provider="gmail"}', lambda v: v == 100)
    assert len(use_prometheus.query('mailrelay_rollout_percent{provider="gmail"}')) == 1


def test_provider_errors_roll_back_within_two_evaluations_and_waiting_messages_move(
        emulator: EmulatorHandle, gmail_senders: Callable[[list[str]], None], relay: Relay,
        use_prometheus: Prometheus, start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    senders = senders_in(0, 5000, 2)
    gmail_senders(senders)
    set_rollout(percent_bp=5000, ladder=(5000, 10_000), fallback=RELAY, window_seconds=12,
                min_rate=2.0, consecutive_successes=1000, failure_limit=2, error_critical=0.05)
    gmail, _ = metrics_worker(start_worker, tmp_path, use_prometheus, "mailrelay.gmail",
                              concurrency=4)
    start_worker("mailrelay.smtp", concurrency=2)
    use_prometheus.wait_for_targets()
    # 10% of sends fail with a 503 (the outcome is unknown: such a message stays with Gmail).
    emulator.client.inject(endpoint="gmail.send", status=503, probability=0.1)
    with Traffic(senders, rate=25) as traffic:
        time.sleep(13)  # a full window of traffic with errors
        first = evaluate()
        # Hold Gmail's queue (its worker stops consuming) so that messages wait unattempted.
        app.control.cancel_consumer("mailrelay.gmail", destination=[gmail.name], reply=True)
        time.sleep(1)
        ids_before_hold = len(traffic.ids)
        time.sleep(1.5)
        second = evaluate()
        ids = traffic.stop()
    assert (first["decision"], second["decision"]) == ("warn", "rollback"), (first, second)
    assert first["inputs"]["error_ratio"] > 0.05 and second["inputs"]["error_ratio"] > 0.05
    assert (row().state, row().percent_bp) == ("aborted", 0)
    waiting = ids[ids_before_hold:]
    assert second["rerouted"] >= 1
    # What intake admitted from its cached row after the rollback is caught by the next run.
    controller.evaluate("gmail", enqueue=enqueue_delivery)
    emulator.client.clear_faults()
    app.control.add_consumer("mailrelay.gmail", destination=[gmail.name], reply=True)
    all_sent(ids, timeout=180)
    where = delivered_once(ids, emulator, relay)
    rerouted = {r.message_id for r in query("SELECT message_id FROM audit WHERE action = 'rerouted'")}
    assert set(waiting) <= rerouted | {mid for mid in ids if _route(mid) == "fallback"}
    for mid in rerouted:
        assert where[mid] == "smtp"
        info = outbox.status(mid)
        assert info is not None and info["via"] == RELAY
        assert info["route"]["decision"] == "rerouted"
        assert [a["outcome"] for a in info["attempts"]] == ["sent"]  # never tried at Gmail
    maybe_sent = {r.id for r in query("SELECT id FROM messages WHERE id = ANY(:ids) AND maybe_sent",
                                      ids=ids)}
    assert maybe_sent, "some 503s were expected"
    for mid in maybe_sent:
        assert where[mid] == "gmail"  # may have reached Gmail: stays with it


def _route(message_id: str) -> str | None:
    info = outbox.status(message_id)
    return (info or {}).get("route", {}).get("decision")


def test_no_traffic_holds(gmail_senders: Callable[[list[str]], None], use_prometheus: Prometheus,
                          start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    [sender] = senders_in(0, 1000, 1)
    gmail_senders([sender])
    set_rollout(percent_bp=1000, ladder=(1000, 10_000), dwell_seconds=0, window_seconds=6,
                consecutive_successes=1)
    metrics_worker(start_worker, tmp_path, use_prometheus, "mailrelay.gmail", concurrency=1)
    use_prometheus.wait_for_targets()
    for _ in range(3):
        result = evaluate()
        assert (result["decision"], result["applied"], result["percent_after"]) == ("hold", True, 10)
        assert "inconclusive" in result["reason"]
        time.sleep(1)
    assert (row().percent_bp, row().successes, row().query_errors) == (1000, 0, 0)
    # The rollback counter is there at 0 before any rollback: the first one is an increase.
    # (This process's registry holds earlier tests' rollbacks: start from no series.)
    from prometheus_client import REGISTRY

    from mailrelay.metrics import ROLLOUT_DECISIONS

    with contextlib.suppress(KeyError):
        ROLLOUT_DECISIONS.remove("gmail", "rollback")
    evaluate()
    assert REGISTRY.get_sample_value("mailrelay_rollout_decisions_total",
                                     {"provider": "gmail", "decision": "rollback"}) == 0


def test_prometheus_stopped_or_slow_holds_and_needs_attention(
        gmail_senders: Callable[[list[str]], None], use_prometheus: Prometheus,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    [sender] = senders_in(0, 1000, 1)
    gmail_senders([sender])
    set_rollout(percent_bp=1000, ladder=(1000, 10_000), dwell_seconds=0, window_seconds=6,
                consecutive_successes=1, consecutive_error_limit=3, failure_limit=1)
    assert evaluate()["decision"] == "hold"  # answers, no data
    slow = SlowProxy(use_prometheus.port, delay=3)
    try:
        monkeypatch.setenv("MAILRELAY_PROMETHEUS_URL", slow.url)
        monkeypatch.setenv("MAILRELAY_PROMETHEUS_TIMEOUT", "0.5")
        get_settings.cache_clear()
        timed_out = evaluate()
    finally:
        slow.close()
    assert (timed_out["decision"], timed_out["percent_after"]) == ("hold", 10)
    assert "no answer within 0.5s" in timed_out["reason"]
    monkeypatch.setenv("MAILRELAY_PROMETHEUS_URL", use_prometheus.url)
    get_settings.cache_clear()
    use_prometheus.stop()
    unreachable = [evaluate() for _ in range(2)]
    assert [r["decision"] for r in unreachable] == ["hold", "hold"]
    assert "unreachable" in unreachable[0]["reason"]
    assert [r["needs_attention"] for r in unreachable] == [False, True]
    assert (row().percent_bp, row().state, row().query_errors) == (1000, "running", 3)
    assert REGISTRY.get_sample_value("mailrelay_rollout_needs_attention", {"provider": "gmail"}) == 1
    assert [d["inputs"].get("error") for d in rollouts.decisions("gmail", limit=3)] == [
        unreachable[1]["inputs"]["error"], unreachable[0]["inputs"]["error"],
        timed_out["inputs"]["error"]]


def test_dry_run_changes_nothing(
        emulator: EmulatorHandle, gmail_senders: Callable[[list[str]], None], relay: Relay,
        use_prometheus: Prometheus, start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    inside, outside = senders_in(0, 1000, 1) + senders_in(1000, 10_000, 1)
    gmail_senders([inside, outside])
    set_rollout(percent_bp=1000, mode="dry_run", fallback=RELAY, ladder=(1000, 10_000),
                dwell_seconds=0, window_seconds=6, consecutive_successes=1, failure_limit=1,
                min_rate=1.0)
    metrics_worker(start_worker, tmp_path, use_prometheus, "mailrelay.gmail", concurrency=2)
    use_prometheus.wait_for_targets()
    with Traffic([inside, outside], rate=8) as traffic:
        use_prometheus.wait_for(TRAFFIC % 6, lambda v: v is not None and v > 2)
        healthy = evaluate()
        emulator.client.inject(endpoint="gmail.send", status=500, probability=0.5)
        use_prometheus.wait_for(
            'sum(rate(mailrelay_deliveries_total{provider="gmail",code!=""}[6s]))',
            lambda v: v is not None and v > 1)
        failing = evaluate()
        ids = traffic.stop()
    emulator.client.clear_faults()
    assert (healthy["decision"], healthy["dry_run"], healthy["percent_after"]) == ("promote", True, 10)
    assert (failing["decision"], failing["dry_run"], failing["percent_after"]) == ("rollback", True, 10)
    assert failing["reason"].startswith("dry run, would rollback")
    assert (row().mode, row().state, row().percent_bp) == ("dry_run", "running", 1000)
    assert failing["rerouted"] == 0
    routes = query("SELECT provider, via_address, route FROM messages WHERE id = ANY(:ids)", ids=ids)
    assert {(r.provider, r.via_address) for r in routes} == {("gmail", None)}
    assert {json.loads(r.route)["would"] for r in routes} == {"admitted", "fallback"}
    assert scalar("SELECT count(*) FROM audit WHERE action = 'rerouted'") == 0
    all_sent(ids)
    assert relay.mailbox.received == []


EVALUATE = [sys.executable, "-m", "mailrelay.cli", "rollout", "evaluate", "gmail", "--json"]


def _two_controllers(env: dict[str, str]) -> list[dict[str, Any]]:
    runs = [subprocess.Popen(EVALUATE, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for process in runs:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        results.extend(json.loads(out))
    return results


def test_two_controllers_at_once_apply_one_decision(
        gmail_senders: Callable[[list[str]], None], use_prometheus: Prometheus) -> None:
    [sender] = senders_in(0, 1000, 1)
    gmail_senders([sender])
    set_rollout(percent_bp=1000, ladder=(1000, 10_000), window_seconds=6)
    # A Prometheus that answers each query after 1.5 s keeps both controllers inside
    # their evaluation at the same time.
    slow = SlowProxy(use_prometheus.port, delay=1.5)
    try:
        env = {"MAILRELAY_PROMETHEUS_URL": slow.url, "MAILRELAY_PROMETHEUS_TIMEOUT": "10"}
        locked = _two_controllers(env)
        # The same race without Redis: both evaluate; the version decides.
        unlocked = _two_controllers({**env, "MAILRELAY_REDIS_URL": "redis://127.0.0.1:1/0"})
    finally:
        slow.close()
    assert sorted(r["skipped"] for r in locked) == [False, True], locked
    assert [r["applied"] for r in unlocked].count(True) == 1, unlocked
    assert any("changed meanwhile" in r["reason"] for r in unlocked)
    assert decisions() == ["create", "hold", "hold"]
    assert row().version == 3


# -- the gate with real workers ----------------------------------------------------------
def test_at_25_percent_exactly_the_low_buckets_reach_gmail_and_the_rest_the_relay(
        emulator: EmulatorHandle, gmail_senders: Callable[[list[str]], None], relay: Relay,
        start_worker: Callable[..., Worker]) -> None:
    admitted, others = senders_in(0, 2500, 5), senders_in(2500, 10_000, 7)
    gmail_senders(admitted + others)
    set_rollout(percent_bp=2500, fallback=RELAY)
    start_worker("mailrelay.intake", concurrency=2)
    start_worker("mailrelay.gmail", concurrency=2)
    start_worker("mailrelay.smtp", concurrency=2)
    task_ids = [app.send_task("mailrelay.send", queue="mailrelay.intake", kwargs={"message": {
        "from": sender, "to": ["colleague@example.org"], "subject": f"hello {n}",
        "text": "hi"}}).id for n, sender in enumerate(admitted + others)]
    wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE request_id = ANY(:ids) AND "
                            "state = 'sent'", ids=task_ids) == len(task_ids), 90, "all sent")
    rows = query("SELECT id, from_address FROM messages WHERE request_id = ANY(:ids)", ids=task_ids)
    where = delivered_once([r.id for r in rows], emulator, relay)
    by_sender = {r.from_address: where[r.id] for r in rows}
    assert {s for s, w in by_sender.items() if w == "gmail"} == set(admitted)
    assert {s for s, w in by_sender.items() if w == "smtp"} == set(others)
    # Through the relay, the From is the sender's own; the envelope is the relay account's.
    for received in relay.mailbox.received:
        assert received.mail_from == RELAY
        assert _header(received.content, "From") in others
    for sender, went in by_sender.items():
        result = CliRunner().invoke(cli, ["rollout", "which", sender, "--to",
                                          "colleague@example.org", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["provider"] == went, sender


def test_queries_are_valid_promql_and_a_bad_answer_is_a_query_error(prometheus: Prometheus) -> None:
    import requests as http

    from mailrelay.rollout.measure import QueryError, _instant, measure, queries
    from mailrelay.rollout.policy import Policy

    policy = Policy(window_seconds=6)
    for expr in queries("gmail", policy).values():
        assert prometheus.query(expr) == []  # accepted; nothing scraped yet
    assert measure("gmail", policy, url=prometheus.url, timeout=5).inputs() == {
        "traffic": None, "error_ratio": None, "latency_p95": None}
    with http.Session() as session, pytest.raises(QueryError, match="HTTP 400, bad_data"):
        _instant(session, prometheus.url, "sum(", 5)
    with http.Session() as session, pytest.raises(QueryError, match="2 series"):
        _instant(session, prometheus.url, 'label_replace(vector(1), "a", "b", "", "") or '
                 'label_replace(vector(2), "a", "c", "", "")', 5)
