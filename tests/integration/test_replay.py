"""Replay end to end: real Gmail workers, Redis, PostgreSQL and the HTTPS emulator."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from mailrelay.cli import cli
from mailrelay.client import submit
from mailrelay.config import get_settings
from mailrelay.store import outbox
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import query, scalar, wait_for
from tests.processes import Worker

pytestmark = pytest.mark.integration

RECIPIENT = "ada@example.org"
COUNT = 30
# The emulator answers an injected 400 with Google's "Bad Request", which the Gmail adapter
# maps to provider_rejected: permanent, so each message fails on its first attempt.
CODE = "provider_rejected"


def replay(*args: str) -> dict[str, object]:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["replay", *args, "--yes", "--json"],
                                    env={"MAILRELAY_OPERATOR": "oncall-ada"})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _states(ids: list[str]) -> Counter[str]:
    return Counter(str((outbox.status(mid) or {}).get("state")) for mid in ids)


@pytest.mark.rabbitmq  # on-call commands work the same on both brokers
def test_failed_messages_replayed_twice_are_each_received_once(
        emulator: EmulatorHandle, gmail_account: str, start_worker: Callable[..., Worker]) -> None:
    start_worker("mailrelay.gmail", concurrency=4)
    emulator.client.inject(endpoint="gmail.send", status=400, reason="badRequest")
    ids = [submit({"from": gmail_account, "to": [RECIPIENT], "subject": f"replay {n}",
                   "text": "hello"}).message_id for n in range(COUNT)]
    wait_for(lambda: _states(ids)["failed"] == COUNT, 90, "every message to fail")
    assert scalar("SELECT count(*) FROM messages WHERE state = 'failed' AND error_code = :code",
                  code=CODE) == COUNT
    assert emulator.client.messages(mailbox=RECIPIENT) == []

    emulator.client.reset()  # the provider accepts mail again
    first = replay("--code", CODE, "--reason", "provider fixed the 400s")
    second = replay("--code", CODE, "--reason", "second try, to be sure")
    assert (first["replayed"], first["skipped"]) == (COUNT, 0)
    assert second["replayed"] == 0  # nothing is failed any more

    wait_for(lambda: _states(ids)["sent"] == COUNT, 90, "every replayed message to be sent")
    headers = [(outbox.status(mid) or {})["message_id_header"].strip("<>") for mid in ids]
    received = Counter(m["message_id"].strip("<>")
                       for m in emulator.client.messages(mailbox=RECIPIENT))
    assert received == Counter(headers) and set(received.values()) == {1}  # each exactly once

    replays = query("SELECT message_id, actor, reason, code FROM audit WHERE action = 'replay'")
    assert sorted(r.message_id for r in replays) == sorted(ids)
    assert {(r.actor, r.reason, r.code) for r in replays} == {
        ("oncall-ada", "provider fixed the 400s", CODE)}
    runs = query("SELECT actor, reason FROM audit WHERE action = 'replay_run' ORDER BY id")
    assert [(r.actor, r.reason) for r in runs] == [
        ("oncall-ada", "provider fixed the 400s"), ("oncall-ada", "second try, to be sure")]
    attempts = query("SELECT message_id, count(*) AS n FROM attempts GROUP BY message_id")
    assert {r.n for r in attempts} == {2}  # the failure, then the one send

    # A third replay of the sent messages, by id this time: each is skipped, nothing sent.
    third = replay(*ids[:5], "--reason", "oops")
    assert (third["replayed"], third["skipped_by_reason"]) == (0, {"sent": 5})
    assert len(emulator.client.messages(mailbox=RECIPIENT)) == COUNT
