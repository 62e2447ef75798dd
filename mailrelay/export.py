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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

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


def registry_for(reading: gauges.OutboxGauges, queues: Mapping[str, QueueStats],
                 intervals: Intervals, took: float) -> CollectorRegistry:
    """The reading as a fresh registry, ready to push (never the process's own)."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=registry)

    messages = gauge("mailrelay_outbox_messages",
                     "Messages in the outbox by provider and state (in flight and failed)",
                     ("provider", "state"))
    for (provider, state), count in reading.messages.items():
        messages.labels(provider=provider, state=state).set(count)
    oldest_queued = gauge("mailrelay_outbox_oldest_queued_age_seconds",
                          "Age of the oldest queued message, by provider", ("provider",))
    oldest_due = gauge("mailrelay_outbox_oldest_due_retrying_age_seconds",
                       "How long the most overdue retrying message has been due, by provider",
                       ("provider",))
    expired = gauge("mailrelay_outbox_expired_leases",
                    "Messages in sending whose lease has expired, by provider", ("provider",))
    # Every provider gets a zero, so that "no backlog" is a value an alert can compare.
    for provider in provider_names.names():
        oldest_queued.labels(provider=provider).set(reading.oldest_queued_age.get(provider, 0.0))
        oldest_due.labels(provider=provider).set(reading.oldest_due_retrying_age.get(provider, 0.0))
        expired.labels(provider=provider).set(reading.expired_leases.get(provider, 0))
    failed = gauge("mailrelay_outbox_failed_last_hour",
                   "Messages that failed for good in the last hour, by provider and code",
                   ("provider", "code"))
    for (provider, code), count in reading.failed_last_hour.items():
        failed.labels(provider=provider, code=code).set(count)
    accounts = gauge("mailrelay_accounts", "Accounts by provider and state", ("provider", "state"))
    for (provider, state), count in reading.accounts.items():
        accounts.labels(provider=provider, state=state).set(count)
    rollout_state = gauge("mailrelay_rollout_state", "1 for each rollout's current state",
                          ("provider", "state"))
    stage = gauge("mailrelay_rollout_stage_percent",
                  "The percent stored for the provider's rollout", ("provider",))
    for provider, (state, percent) in reading.rollouts.items():
        rollout_state.labels(provider=provider, state=state).set(1)
        stage.labels(provider=provider).set(percent)
    length = gauge("mailrelay_queue_length", "Messages waiting in the Celery queue",
                   ("queue", "provider"))
    consumers = gauge("mailrelay_queue_consumers", "Workers consuming the Celery queue",
                      ("queue", "provider"))
    for queue, stats in queues.items():
        length.labels(queue=queue, provider=provider_of(queue)).set(stats.length)
        consumers.labels(queue=queue, provider=provider_of(queue)).set(stats.consumers)
    gauge("mailrelay_export_interval_seconds", "The metric export's schedule").set(intervals.export)
    gauge("mailrelay_rollout_interval_seconds",
          "The rollout controller's schedule").set(intervals.rollout)
    gauge("mailrelay_export_duration_seconds", "How long the last export's reading took").set(took)
    gauge("mailrelay_export_last_success_timestamp_seconds",
          "When the last complete export was pushed (Unix time)").set(time.time())
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
    reading = gauges.read()
    queues = read_queues()
    registry = registry_for(reading, queues, intervals, time.monotonic() - started)
    push_to_gateway(settings.pushgateway_url, job=JOB, registry=registry,
                    timeout=settings.prometheus_timeout)
    return True
