"""Several worker hosts on one outbox and one broker (issue 17): two machines' worker
groups, each an intake and a Gmail worker started by `mailrelay worker --profile`, with
node names `...@host-a` and `...@host-b`; a producer process that does not import
mailrelay; the reconciler as beat runs it. Host A is killed mid-run, all of it at once
(SIGKILL to its process group): host B takes over its leases and every message reaches
the emulator exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import (
    Reconciler,
    assert_each_received_once,
    produce_many,
    query,
    scalar,
    wait_for,
)
from tests.processes import Host

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

RECIPIENT = "ada@example.org"
COUNT = 300
PROFILES = {"intake": 2, "gmail": 4}
# The shortest lease and reconcile window the settings allow, so that the dead host's
# leases expire and are re-enqueued within seconds; the lookups that settle an attempt of
# unknown outcome are instant at the emulator, so a second is enough to wait for them.
HOSTS_ENV = {"MAILRELAY_LEASE_SECONDS": "10", "MAILRELAY_RECONCILE_AFTER": "10",
             "MAILRELAY_VERIFY_SETTLE_SECONDS": "1", "MAILRELAY_VERIFY_RECHECK_SECONDS": "1"}


@pytest.fixture
def start_hosts(tmp_path: Path) -> Iterator[Callable[..., list[Host]]]:
    started: list[Host] = []

    def start(names: list[str], env: dict[str, str]) -> list[Host]:
        # All started before any is waited for: the machines boot side by side.
        hosts = [Host(name, PROFILES, log_dir=tmp_path, env=env) for name in names]
        started.extend(hosts)
        for host in hosts:
            host.wait_ready()
        return hosts

    yield start
    for host in started:
        host.stop()


def message(n: int) -> dict[str, Any]:
    return {"from": "sender@example.com", "to": [RECIPIENT], "subject": f"two hosts {n}",
            "text": f"body {n}"}


def sent_count() -> int:
    return int(scalar("SELECT count(*) FROM messages WHERE state = 'sent'"))


def leases_of(host: str) -> list[str]:
    """Messages whose lease a Gmail worker of ``host`` holds (owner: node/pid/claim)."""
    return [row[0] for row in query("SELECT id FROM messages WHERE state = 'sending' "
                                    "AND lease_owner LIKE :owner", owner=f"gmail@{host}/%")]


def test_one_of_two_hosts_killed_mid_run(emulator: EmulatorHandle, gmail_account: str,
                                         fast_settings: dict[str, str],
                                         start_hosts: Callable[..., list[Host]]) -> None:
    env = {**fast_settings, **HOSTS_ENV}
    # Each send takes 150 ms at the "provider": a kill finds sends in flight on host A.
    emulator.client.inject(endpoint="gmail.send", latency_ms=150)
    host_a, _host_b = start_hosts(["host-a", "host-b"], env)
    with Reconciler(every=1.0, env=env):
        task_ids = produce_many([message(n) for n in range(COUNT)])
        wait_for(lambda: scalar("SELECT count(*) FROM messages") == COUNT, 30, "intake of all")
        wait_for(lambda: sent_count() >= COUNT // 5 and len(leases_of("host-a")) >= 2, 30,
                 "host A sending")
        host_a.kill()
        # A statement host A had already sent may still commit: let it land first.
        time.sleep(0.5)
        killed_at = scalar("SELECT (now() AT TIME ZONE 'UTC')::timestamp")
        orphans = leases_of("host-a")
        assert orphans, "host A finished its sends before it died: nothing to take over"
        assert sent_count() < COUNT, "the kill came too late to test anything"
        wait_for(lambda: sent_count() == COUNT, 60, "all sent after host A died")

    # One message per request, all sent, each received once (by its Message-ID).
    assert sorted(row[0] for row in query("SELECT request_id FROM messages")) == sorted(task_ids)
    assert scalar("SELECT count(*) FROM messages WHERE state <> 'sent' "
                  "OR lease_owner IS NOT NULL") == 0
    ids = [row[0] for row in query("SELECT id FROM messages")]
    assert_each_received_once(emulator, ids, RECIPIENT)

    # Both hosts took in and sent, each under its own node name (the audit's actor and the
    # attempt's worker are `node/pid`), and the dead one did nothing after its kill.
    nodes = "SELECT DISTINCT split_part({column}, '/', 1) FROM {table}"
    intake = {row[0] for row in query(nodes.format(column="actor", table="audit")
                                      + " WHERE action = 'intake'")}
    assert intake == {"intake@host-a", "intake@host-b"}
    senders = {row[0] for row in query(nodes.format(column="worker", table="attempts"))}
    assert senders == {"gmail@host-a", "gmail@host-b"}
    assert scalar("SELECT count(*) FROM attempts WHERE worker LIKE 'gmail@host-a/%' "
                  "AND started_at > :at", at=killed_at) == 0

    # Every lease host A held when it died was taken over by host B: its attempt closed
    # as unknown, the message verified with the provider and finished by host B.
    for message_id in orphans:
        attempts = query("SELECT worker, outcome FROM attempts WHERE message_id = :id "
                         "ORDER BY number", id=message_id)
        assert ("unknown" in [outcome for worker, outcome in attempts
                              if worker.startswith("gmail@host-a/")]), attempts
        assert attempts[-1].worker.startswith("gmail@host-b/"), attempts
        assert scalar("SELECT takeovers FROM messages WHERE id = :id", id=message_id) >= 1
        finished = query("SELECT actor FROM audit WHERE message_id = :id AND action = 'finish' "
                         "AND to_state = 'sent'", id=message_id)
        assert [row[0].split("/")[0] for row in finished] == ["gmail@host-b"], finished
