"""Celery beat's schedule, declarative: entry name → task, schedule, queue.

Loaded by ``mailrelay.celery_app``. Every entry runs on ``mailrelay.control``; a test
checks that each names a registered task. The reconciler, rollout controller and metric
export join here as they land.
"""

from __future__ import annotations

SCHEDULE: dict[str, dict[str, object]] = {}
