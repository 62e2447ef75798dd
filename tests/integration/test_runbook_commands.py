"""Every `mailrelay` command, SQL statement and PromQL expression quoted in runbooks/ runs
against a live system: real intake, Gmail and control workers, Redis, PostgreSQL, the
emulator, and a Prometheus scraping the workers with monitoring/'s rules.

The placeholders get live values (``ID`` a sent message (a failed one exists too), ``ADDRESS`` a working Gmail
account, ``PROVIDER`` gmail, which has a running rollout and a consumer). A command that
offers ``--dry-run`` runs with it, so none may change data: the database (everything but
an account's health figures, which a probe updates) must be the same afterwards. Each must
exit as its runbook says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from sqlalchemy import text

from mailrelay.cli import cli
from mailrelay.client import submit
from mailrelay.store import outbox
from mailrelay.store.db import get_engine
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import wait_for
from tests.processes import Worker
from tests.prometheus import Prometheus
from tests.runbook_text import ROOT, Command, all_commands, refused_promql, statements

pytestmark = pytest.mark.integration

RULES = tuple(sorted((ROOT / "monitoring" / "prometheus" / "rules").glob("*.yml")))
# Written by a probe or a token refresh (`accounts check`): health, not data.
HEALTH = ("updated_at", "last_success_at", "last_refresh_at", "consecutive_failures",
          "last_failure_at", "last_error_code", "last_error_detail")
TABLES = ("messages", "attempts", "audit", "rollouts", "rollout_decisions", "sink_deliveries")


@dataclass
class Live:
    values: dict[str, str]
    env: dict[str, str]
    prometheus: Prometheus


def snapshot() -> dict[str, str]:
    """A digest of every table's rows."""
    digests = {}
    with get_engine().connect() as conn:
        for table in TABLES:
            # Our own table names, not input.
            rows = f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"  # noqa: S608
            digests[table] = conn.execute(text(rows)).scalar_one()
        columns = [row[0] for row in conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts'"))
            if row[0] not in HEALTH]
        accounts = (f"SELECT md5(coalesce(string_agg(row({', '.join(columns)})::text, ',' "  # noqa: S608
                    "ORDER BY id), '')) FROM accounts")
        digests["accounts"] = conn.execute(text(accounts)).scalar_one()
    return digests


@pytest.fixture
def live(tmp_path: Path, emulator: EmulatorHandle, gmail_account: str,
         start_worker: Callable[..., Worker]) -> Iterator[Live]:
    from mailrelay.devstack import free_port

    ports = [free_port() for _ in range(3)]
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(tmp_path / "prometheus", rule_files=RULES)
    prometheus.start()
    try:
        for queues, port in zip(("mailrelay.intake", "mailrelay.gmail", "mailrelay.control"),
                                ports, strict=True):
            metrics = tmp_path / f"metrics-{port}"
            metrics.mkdir()
            start_worker(queues, concurrency=2,
                         extra_env={"MAILRELAY_METRICS_PORT": str(port),
                                    "PROMETHEUS_MULTIPROC_DIR": str(metrics),
                                    "MAILRELAY_PROMETHEUS_URL": prometheus.url})
        prometheus.scrape(*ports)
        sent = submit({"from": gmail_account, "to": ["ada@example.org"], "subject": "runbook",
                       "text": "hello"}).message_id
        wait_for(lambda: (outbox.status(sent) or {}).get("state") == "sent", 60, "a message sent")
        emulator.client.inject(endpoint="gmail.send", status=400, reason="badRequest", count=1)
        failed = submit({"from": gmail_account, "to": ["bob@example.org"], "subject": "runbook",
                         "text": "hello"}).message_id
        wait_for(lambda: {(outbox.status(m) or {}).get("state") for m in (sent, failed)}
                 == {"sent", "failed"}, 60, "one message sent and one failed")
        env = {**os.environ, "MAILRELAY_PROMETHEUS_URL": prometheus.url,
               "MAILRELAY_OPERATOR": "runbook-test"}
        made = subprocess.run([sys.executable, "-m", "mailrelay.cli", "rollout", "set", "gmail",
                               "--mode", "dry_run", "--percent", "25", "--reason", "runbook test"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        prometheus.wait_for_targets()
        yield Live({"ID": sent, "ADDRESS": gmail_account, "PROVIDER": "gmail"}, env, prometheus)
    finally:
        prometheus.stop()


def _click_command(args: list[str]) -> click.Command:
    found: click.Command = cli
    while isinstance(found, click.Group):
        sub = found.get_command(click.Context(found), args[0])
        assert sub is not None, args
        found, args = sub, args[1:]
    return found


def argv(command: Command, values: dict[str, str]) -> list[str]:
    """The command's arguments with live values, and --dry-run if it offers one."""
    pattern = re.compile(r"\b(" + "|".join(values) + r")\b")
    args = [pattern.sub(lambda m: values[m[1]], word) for word in command.args]
    offers = any("--dry-run" in getattr(p, "opts", ()) for p in _click_command(args).params)
    if offers and "--dry-run" not in args:
        args.append("--dry-run")
    return args


def run(command: Command, live: Live) -> str | None:
    """None if it exited as the runbook says; otherwise what went wrong."""
    args = argv(command, live.values)
    env = {**live.env, **{name: "client-secret" if value == "..." else value
                          for name, value in command.env}}
    try:
        done = subprocess.run([sys.executable, "-m", "mailrelay.cli", *args], env=env,
                              capture_output=True, text=True, timeout=90, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"{command}: no exit within 90 s (`mailrelay {' '.join(args)}`)"
    if done.returncode in command.exits:
        return None
    return (f"{command}: exit {done.returncode}, the runbook says {sorted(command.exits)} "
            f"(`mailrelay {' '.join(args)}`): {done.stderr.strip()[-400:]}")


def test_every_runbook_command_runs_and_exits_as_its_runbook_says(live: Live) -> None:
    commands = {tuple(argv(c, live.values)): c for c in all_commands()}.values()
    assert len(commands) > 50
    before = snapshot()
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(lambda c: run(c, live), commands) if f]
    assert failures == []
    assert snapshot() == before, "a runbook command changed data"


def test_every_runbook_sql_statement_and_promql_expression_runs(live: Live) -> None:
    failures = []
    with get_engine().connect() as conn:
        for page, sql in statements("sql"):
            try:
                with conn.begin():
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                    conn.execute(text(sql.replace(":", r"\:")))
            except Exception as err:  # each failure is reported below
                failures.append(f"{page}: {sql}: {str(err).splitlines()[0]}")
    failures += refused_promql(live.prometheus.url)
    assert failures == []
    # The expressions answer with the live system's own series, not only parse.
    assert live.prometheus.query('up{job="mailrelay"} == 1')
