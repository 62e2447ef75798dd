"""Beat's metric export: what only the database and the broker know, pushed to Pushgateway.

Workers count what they do; they cannot see a backlog nobody works on, a lease nobody
renews or an account nobody uses. Every ``MAILRELAY_EXPORT_INTERVAL`` seconds beat runs
``mailrelay.export_metrics``, which reads the outbox (``store.gauges``) and the broker's
queues (the task passes them in), and replaces the whole group ``job="mailrelay-export"``
in the Pushgateway (``push_to_gateway`` is a PUT: a series that disappears from the
reading disappears from the gateway). The grouping key holds the job only, never a host
or a pid, so the export may run on any control worker.

``mailrelay_export_last_success_timestamp_seconds`` is pushed only with a complete
reading: when the database or the broker fails, nothing is pushed, the gateway keeps the
last good reading with its old timestamp, and the "export stale" alert can fire.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import GaugeMetricFamily

from mailrelay import provider_names
from mailrelay.config import get_settings
from mailrelay.logctx import get_logger
from mailrelay.store import gauges

JOB = "mailrelay-export"
log = get_logger(__name__)
_warned_unset = False


@dataclass(frozen=True)
class QueueStats:
    """One Celery queue: messages waiting and workers consuming it."""

    length: int
    consumers: int


@dataclass(frozen=True)
class Intervals:
    """The schedule the alerts scale by (so a test system with short intervals works)."""

    export: float
    rollout: float


def provider_of(queue: str) -> str:
    """The provider a queue serves, or "" for intake and control."""
    name = queue.removeprefix(provider_names.QUEUE_PREFIX)
    return name if name in provider_names.REGISTRY else ""


class _Reading:
    """A collector of one reading, as plain metric families: in a prefork worker,
    prometheus_client backs every Gauge object with the multiprocess files, which would
    leak the export's values into the worker's own /metrics (with a pid label)."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families


def registry_for(reading: gauges.OutboxGauges, queues: Mapping[str, QueueStats],
                 intervals: Intervals, took: float) -> CollectorRegistry:
    """The reading as a fresh registry, ready to push (never the process's own)."""
    families: list[GaugeMetricFamily] = []

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=list(labels))
        families.append(family)
        return family

    messages = gauge("mailrelay_outbox_messages",
                     "Messages in the outbox by provider and state (in flight and failed)",
                     ("provider", "state"))
    for (provider, state), count in reading.messages.items():
        messages.add_metric([provider, state], count)
    oldest_queued = gauge("mailrelay_outbox_oldest_queued_age_seconds",
                          "Age of the oldest queued message, by provider", ("provider",))
    oldest_due = gauge("mailrelay_outbox_oldest_due_retrying_age_seconds",
                       "How long the most overdue retrying message has been due, by provider",
                       ("provider",))
    expired = gauge("mailrelay_outbox_expired_leases",
                    "Messages in sending whose lease has expired, by provider", ("provider",))
    # Every provider gets a zero, so that "no backlog" is a value an alert can compare.
    for provider in provider_names.names():
        oldest_queued.add_metric([provider], reading.oldest_queued_age.get(provider, 0.0))
        oldest_due.add_metric([provider], reading.oldest_due_retrying_age.get(provider, 0.0))
        expired.add_metric([provider], reading.expired_leases.get(provider, 0))
    failed = gauge("mailrelay_outbox_failed_last_hour",
                   "Messages that failed for good in the last hour, by provider and code",
                   ("provider", "code"))
    for (provider, code), count in reading.failed_last_hour.items():
        failed.add_metric([provider, code], count)
    accounts = gauge("mailrelay_accounts", "Accounts by provider and state", ("provider", "state"))
    for (provider, state), count in reading.accounts.items():
        accounts.add_metric([provider, state], count)
    rollout_state = gauge("mailrelay_rollout_state", "1 for each rollout's current state",
                          ("provider", "state"))
    stage = gauge("mailrelay_rollout_stage_percent",
                  "The percent stored for the provider's rollout", ("provider",))
    for provider, (state, percent) in reading.rollouts.items():
        rollout_state.add_metric([provider, state], 1)
        stage.add_metric([provider], percent)
    gauge("mailrelay_notifications_pending",
          "Outcome notifications not yet accepted by the broker").add_metric(
        [], reading.notifications.pending)
    gauge("mailrelay_notifications_oldest_pending_age_seconds",
          "Age of the oldest outcome notification not yet published (0: none)").add_metric(
        [], reading.notifications.oldest_age)
    length = gauge("mailrelay_queue_length", "Messages waiting in the Celery queue",
                   ("queue", "provider"))
    consumers = gauge("mailrelay_queue_consumers", "Workers consuming the Celery queue",
                      ("queue", "provider"))
    for queue, stats in queues.items():
        length.add_metric([queue, provider_of(queue)], stats.length)
        consumers.add_metric([queue, provider_of(queue)], stats.consumers)
    gauge("mailrelay_export_interval_seconds", "The metric export's schedule").add_metric(
        [], intervals.export)
    gauge("mailrelay_rollout_interval_seconds", "The rollout controller's schedule").add_metric(
        [], intervals.rollout)
    gauge("mailrelay_export_duration_seconds", "How long the last export's reading took").add_metric(
        [], took)
    gauge("mailrelay_export_last_success_timestamp_seconds",
          "When the last complete export was pushed (Unix time)").add_metric([], time.time())
    registry = CollectorRegistry()
    registry.register(_Reading(families))
    return registry


def export(read_queues: Callable[[], Mapping[str, QueueStats]], intervals: Intervals) -> bool:
    """Read and push once; False when no Pushgateway is configured (logged once)."""
    global _warned_unset
    settings = get_settings()
    if not settings.pushgateway_url:
        if not _warned_unset:
            _warned_unset = True
            log.info("MAILRELAY_PUSHGATEWAY_URL is not set: the metric export does nothing")
        return False
    started = time.monotonic()
    # The broker first (its inspect waits for the workers' answers), the outbox last:
    # the ages pushed are as of the push, not a few seconds older.
    queues = read_queues()
    reading = gauges.read()
    registry = registry_for(reading, queues, intervals, time.monotonic() - started)
    push_to_gateway(settings.pushgateway_url, job=JOB, registry=registry,
                    timeout=settings.prometheus_timeout)
    return True
