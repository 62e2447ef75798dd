"""How mailrelay's queues are declared on each broker, and the countdowns both accept."""

from __future__ import annotations

import pytest

from mailrelay import broker_queues, config
from mailrelay.errors import ConfigError


def test_on_redis_a_queue_is_a_plain_list() -> None:
    queue = broker_queues.declared("mailrelay.gmail", amqp=False, delivery_limit=20)
    assert queue.routing_key == "mailrelay.gmail" and not queue.queue_arguments


def test_on_rabbitmq_a_queue_is_a_quorum_queue_on_a_topic_exchange() -> None:
    queue = broker_queues.declared("mailrelay.gmail", amqp=True, delivery_limit=7)
    assert queue.queue_arguments == {"x-queue-type": "quorum", "x-delivery-limit": 7,
                                     "x-dead-letter-exchange": broker_queues.DEAD_LETTER_EXCHANGE}
    # Native delayed delivery forwards through topic exchanges only.
    assert (queue.exchange.name, queue.exchange.type) == ("mailrelay", "topic")
    assert queue.durable and queue.exchange.durable
    control = broker_queues.declared("mailrelay.control", amqp=True, delivery_limit=7,
                                     dead_letters=False)
    assert "x-dead-letter-exchange" not in control.queue_arguments
    dead = broker_queues.dead_letter_queue()
    assert dead.name == broker_queues.DEAD_LETTER_QUEUE
    assert dead.queue_arguments == {"x-queue-type": "quorum"}  # no limit of its own


@pytest.mark.parametrize(("url", "amqp"), [
    ("amqp://guest:guest@127.0.0.1:5672//", True), ("amqps://rabbit.internal/relay", True),
    ("pyamqp://127.0.0.1//", True), ("redis://127.0.0.1:6379/0", False),
    ("rediss://redis.internal:6380/0", False)])
def test_which_broker(url: str, amqp: bool) -> None:
    assert broker_queues.is_amqp(url) is amqp


@pytest.mark.parametrize(("countdown", "whole"), [
    (None, None), (0, None), (-1.5, None), (0.2, 1), (1.0, 1), (2.01, 3), (59.5, 60)])
def test_countdowns_are_whole_seconds_rounded_up(countdown: float | None, whole: int | None) -> None:
    assert broker_queues.whole_seconds(countdown) == whole


@pytest.mark.parametrize(("routing_key", "queue"), [
    ("mailrelay.intake", "mailrelay.intake"),
    ("1.0.1.mailrelay.gmail", "mailrelay.gmail"), ("direct", "direct")])
def test_the_queue_a_task_came_through(routing_key: str, queue: str) -> None:
    assert broker_queues.queue_of(routing_key) == queue


def test_on_rabbitmq_the_consumer_timeout_must_exceed_the_longest_hold() -> None:
    amqp = {"MAILRELAY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
    # A delivery may hold its task until its hard time limit (soft limit + 60 s).
    with pytest.raises(ConfigError, match="MAILRELAY_BROKER_CONSUMER_TIMEOUT"):
        config.load({**amqp, "MAILRELAY_DELIVER_TIME_LIMIT": "1800"})
    with pytest.raises(ConfigError, match="MAILRELAY_BROKER_CONSUMER_TIMEOUT"):
        config.load({**amqp, "MAILRELAY_BROKER_CONSUMER_TIMEOUT": "960"})
    assert config.load({**amqp, "MAILRELAY_BROKER_CONSUMER_TIMEOUT": "961"}).deliver_time_limit == 900
    # Redis has no consumer timeout: a long delivery is its own business there.
    assert config.load({"MAILRELAY_DELIVER_TIME_LIMIT": "3600"}).deliver_time_limit == 3600
