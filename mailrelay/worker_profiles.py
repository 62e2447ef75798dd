"""What a worker profile is, and how one becomes `celery worker` arguments.

The profiles themselves are data in the top-level ``workers/`` package, one module per
queue, each defining ``PROFILE``; that package finds and loads them. This module imports
nothing of mailrelay, so the profiles import it downward.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerProfile:
    name: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    prefetch_multiplier: int = 1
    why: str = ""

    def argv(self, *, concurrency: int | None = None, loglevel: str = "info",
             hostname: str | None = None) -> list[str]:
        return [
            "worker",
            "--queues", ",".join(self.queues),
            "--pool", self.pool,
            "--concurrency", str(concurrency or self.concurrency),
            "--prefetch-multiplier", str(self.prefetch_multiplier),
            "--hostname", hostname or f"{self.name}@%h",
            "--task-events",
            "--loglevel", loglevel,
            # Without gossip and mingle a worker starts faster and sends no chatter; each
            # worker is independent, and the outbox, not the broker, holds shared state.
            "--without-gossip", "--without-mingle",
        ]
