"""`mailrelay notify pending/publish/drop` and the notifications in `status`, against the
real PostgreSQL and the run's broker: ids and codes only, never metadata or content."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from mailrelay import intake
from mailrelay.cli import cli
from mailrelay.config import get_settings
from mailrelay.store import notifications, outbox
from mailrelay.store.outbox import Outcome
from mailrelay.store.states import State

pytestmark = pytest.mark.rabbitmq  # the publish is broker-specific

NOTIFY = {"task": "billing.mail_outcome", "queue": "billing.cli-events"}


def run(*args: str) -> Result:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env={"MAILRELAY_OPERATOR": "oncall-ada"})
    finally:
        get_settings.cache_clear()


def _sent(sender: str, queue: str = NOTIFY["queue"]) -> str:
    mid = intake.take_in({"from": sender, "to": ["ada@example.org"], "subject": "private",
                          "text": "private body", "metadata": {"secret_ref": "m-1"},
                          "notify": {**NOTIFY, "queue": queue}},
                         request_id=None, actor="t").result.message_id
    claim = outbox.claim(mid, worker="w", lease_seconds=60)
    assert claim is not None
    assert outbox.finish(claim, Outcome(State.SENT, provider_message_id="p"), latency_ms=1)
    return mid


@pytest.fixture
def declared_queue() -> Iterator[None]:
    """The producer's queue exists (RabbitMQ refuses a publish to one that does not), for
    this test only (other tests check that the vhost holds mailrelay's queues only)."""
    from kombu.entity import Queue

    from mailrelay.celery_app import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        Queue(NOTIFY["queue"], durable=False)(channel).declare()  # type: ignore[no-untyped-call]
        channel.queue_purge(NOTIFY["queue"])
    yield
    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(NOTIFY["queue"])


def test_pending_lists_ids_and_codes_and_publish_empties_it(
        sink_account: str, clean_redis: None, declared_queue: None) -> None:
    mid = _sent(sink_account)
    listed = run("notify", "pending", "--json")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert (row["message_id"], row["outcome"], row["queue"]) == (mid, "sent", NOTIFY["queue"])
    assert "m-1" not in listed.stdout and "ada@example.org" not in listed.stdout
    table = run("notify", "pending")
    assert mid in table.stdout and "billing.cli-events" in table.stdout

    dry = run("notify", "publish", "--dry-run", "--json")
    assert json.loads(dry.stdout) == {"dry_run": True, "would_publish": 1}
    assert notifications.count_pending() == 1
    done = run("notify", "publish", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"due": 1, "published": 1, "pending": 0}
    assert run("notify", "pending").stdout.strip() == "no outcome notification is pending"

    status = run("status", mid)
    assert "billing.mail_outcome on billing.cli-events" in status.stdout
    assert "published" in status.stdout
    info = json.loads(run("status", mid, "--json").stdout)
    assert info["notify"] == NOTIFY and info["notifications"][0]["state"] == "published"
    assert "m-1" not in json.dumps(info)


def test_drop_needs_a_reason_and_is_audited(sink_account: str, clean_redis: None) -> None:
    _sent(sink_account, queue="billing.gone")
    assert run("notify", "drop", "--queue", "billing.gone", "--yes").exit_code == 2
    dry = run("notify", "drop", "--queue", "billing.gone", "--dry-run", "--json")
    assert json.loads(dry.stdout) == {"dry_run": True, "queue": "billing.gone", "would_drop": 1}
    done = run("notify", "drop", "--queue", "billing.gone", "--reason", "retired", "--yes",
               "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"queue": "billing.gone", "dropped": 1}
    assert notifications.count_pending() == 0
