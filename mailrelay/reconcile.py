"""The reconciler: re-enqueue every message that no task will pick up any more.

The broker is only transport. A message stays unsent if its task was lost (Redis
restarted empty, a publish failed after the commit), if its retry wait was too long for
a Celery countdown (parked in ``next_attempt_at``), or if the worker holding its lease
died. Every 15 s, beat runs this on ``mailrelay.control``; what counts as stranded, on
the database's clock, is ``mailrelay.store.stranded``.

Re-enqueueing is always safe: the claim decides who sends, and a second task for the same
message finds it claimed or finished and does nothing. Each re-enqueued message is
touched (``updated_at``) and audited, so it is re-enqueued at most once per window.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from mailrelay.config import get_settings
from mailrelay.metrics import RECONCILED
from mailrelay.store import stranded

BATCH = 500
# What a stranded message's state says happened to it, for the metric's ``kind``.
FOUND_KIND = {"queued": "lost_task", "retrying": "parked_retry", "sending": "dead_lease"}
# One run keeps going while batches come back full, for at most this long: a backlog of
# parked retries never falls behind, and a run never overlaps the next (every 15 s).
RUN_SECONDS = 10.0


def reconcile(enqueue: Callable[[str, str], None], *, now: dt.datetime | None = None,
              limit: int = BATCH) -> int:
    """Re-enqueue what is stranded; return how many. ``enqueue(id, provider)`` publishes.

    ``now`` is the moment judged by (tests move it); otherwise the database's clock.
    """
    settings = get_settings()
    after = dt.timedelta(seconds=settings.reconcile_after)
    lease = dt.timedelta(seconds=settings.lease_seconds)
    ends = time.monotonic() + RUN_SECONDS
    done: set[str] = set()  # found in this run: with a test's ``now`` they stay stranded
    total = 0
    while True:
        clock, found = stranded.find(after=after, lease=lease, limit=limit, now=now)
        fresh = [item for item in found if item.message_id not in done]
        # Marked first, with the same test, so that one sent or failed since it was found
        # is neither enqueued nor stamped; a crash before the publish leaves the marked
        # ones to the next window.
        marked = stranded.mark(fresh, now=clock, after=after, lease=lease)
        for item in marked:
            enqueue(item.message_id, item.provider)
            RECONCILED.labels(kind=FOUND_KIND.get(item.state, item.state)).inc()
        done.update(item.message_id for item in fresh)
        total += len(marked)
        if len(found) < limit or not fresh or time.monotonic() > ends:
            return total
