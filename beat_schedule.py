"""Celery beat's schedule, declarative: entry name → task, schedule, queue.

Loaded by ``mailrelay.celery_app``. Every entry runs on ``mailrelay.control``; a test
checks that each names a registered task. ``interval_setting`` names the MAILRELAY_*
setting that overrides ``schedule`` (and ``expires`` with it).
"""

from __future__ import annotations

SCHEDULE: dict[str, dict[str, object]] = {
    # Re-enqueues messages no task will pick up (lost tasks, parked retries, dead leases).
    "reconcile-outbox": {
        "task": "mailrelay.reconcile",
        # Often, so that a dead worker's message is taken over within a minute of its
        # death (lease + this + the settle time); the query uses a partial index.
        "schedule": 15.0,
        "options": {"queue": "mailrelay.control", "expires": 14},
    },
    # The rollout controller: promote, hold or roll back each running rollout from
    # Prometheus; after a rollback, move waiting messages to the fallback.
    "rollout-evaluate": {
        "task": "mailrelay.rollout_evaluate",
        "schedule": 60.0,
        "interval_setting": "rollout_interval",
        "options": {"queue": "mailrelay.control", "expires": 55},
    },
    # What only the database and the broker know (backlog ages, dead leases, queue
    # lengths, accounts by state), pushed to MAILRELAY_PUSHGATEWAY_URL.
    "export-metrics": {
        "task": "mailrelay.export_metrics",
        "schedule": 30.0,
        "interval_setting": "export_interval",
        "options": {"queue": "mailrelay.control", "expires": 27},
    },
    # Lets finished messages' idempotency keys go after MAILRELAY_IDEMPOTENCY_RETENTION.
    "expire-idempotency-keys": {
        "task": "mailrelay.expire_idempotency_keys",
        "schedule": 3600.0,
        "options": {"queue": "mailrelay.control", "expires": 3000},
    },
    # Deletes ended messages after MAILRELAY_ROW_RETENTION and drops their payloads after
    # MAILRELAY_PAYLOAD_RETENTION. Often and short (each run stops after a few seconds),
    # so that a backlog drains without holding the control worker.
    "purge-outbox": {
        "task": "mailrelay.purge_outbox",
        "schedule": 300.0,
        "options": {"queue": "mailrelay.control", "expires": 270},
    },
}
