"""Keeping a claim's lease alive while its send runs, and refusing to send without it.

A lease is short (MAILRELAY_LEASE_SECONDS) so that a dead worker's message is taken over
soon. A send may take longer than a lease: a token refresh to wait for, a Graph draft
with dozens of upload chunks. While a send is in progress, one background thread per
process renews every lease it holds once a third of it has passed, and before every
request the provider adapter asks ``before_request``: a lease that was lost, or cannot be
renewed, stops the send before that request leaves. A normal send finishes long before
a third of its lease: it costs no renewal and no round trip.

Time left is counted on this host's monotonic clock from what the database said at the
claim or the last renewal, so a worker whose wall clock is wrong still knows when its
lease ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from mailrelay.errors import MailrelayError, TransientInfraError
from mailrelay.logctx import get_logger
from mailrelay.store import outbox
from mailrelay.store.outbox import Claim, Renewal

log = get_logger(__name__)

# Never start a request with less lease than this left: it must be able to end in time.
MARGIN_SECONDS = 3.0


class LeaseLost(MailrelayError):
    """The claim's lease is gone (taken over, or the message moved on): send nothing."""

    def __init__(self, detail: str, *, recorded_provider_id: str | None = None) -> None:
        super().__init__("internal_error", detail)
        self.recorded_provider_id = recorded_provider_id


Renewer = Callable[[Claim, float], Renewal | None]


class Lease:
    """One claim's lease as this process holds it."""

    def __init__(self, claim: Claim, lease_seconds: float,
                 renewer: Renewer | None = None) -> None:
        self.claim = claim
        self.lease_seconds = lease_seconds
        self._renewer = renewer or (lambda c, s: outbox.renew(c, lease_seconds=s))
        self._ends = time.monotonic() + claim.lease_seconds_left
        self._lock = threading.Lock()
        self.lost: LeaseLost | None = None
        self.renewals = 0
        self.recheck_before_send = False

    def left(self) -> float:
        return self._ends - time.monotonic()

    def due(self) -> bool:
        """A third of the lease has passed since the claim or the last renewal."""
        return self.left() < self.lease_seconds * 2 / 3

    def renew(self) -> None:
        """Extend the lease now; LeaseLost if it is not ours any more."""
        with self._lock:
            if self.lost is not None:
                raise self.lost
            asked = time.monotonic()
            renewal = self._renewer(self.claim, self.lease_seconds)
            if renewal is None:
                self.lost = LeaseLost("the lease was taken over; not sent")
                raise self.lost
            self.renewals += 1
            self._ends = asked + renewal.seconds_left
            if renewal.recorded_provider_id:
                # An earlier attempt, past its own lease, sent the message after all.
                self.lost = LeaseLost("an earlier attempt's send was recorded; not sent again",
                                      recorded_provider_id=renewal.recorded_provider_id)
                raise self.lost

    def before_request(self, *, sends: bool) -> None:
        """Called before every provider request: raise LeaseLost rather than let a request
        leave that could outlive the lease. With ``recheck_before_send`` (a send after an
        attempt of unknown outcome) a request that may send renews whatever is left, and
        so re-reads whether that attempt's send was recorded meanwhile."""
        if self.lost is not None:
            raise self.lost
        if (sends and self.recheck_before_send) or self.due() or self.left() < MARGIN_SECONDS:
            self.renew()


class _Keeper:
    """The process's background thread renewing the leases of sends in progress."""

    TICK = 0.5

    def __init__(self) -> None:
        self._leases: set[Lease] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mailrelay-leases",
                                                daemon=True)
                self._thread.start()

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            with self._lock:
                due = [lease for lease in self._leases if lease.lost is None and lease.due()]
            for lease in due:
                try:
                    lease.renew()
                except LeaseLost:
                    log.warning("lease lost while the send was in progress")
                except (TransientInfraError, MailrelayError):
                    pass  # the database is away: before_request stops the send in time
                except Exception:  # the thread must live on for the next lease
                    log.exception("renewing a lease failed")


_keepers: dict[int, _Keeper] = {}


def _keeper() -> _Keeper:
    import os

    found = _keepers.get(os.getpid())  # per process: a thread does not survive a fork
    if found is None:
        found = _keepers[os.getpid()] = _Keeper()
    return found


@contextlib.contextmanager
def kept(lease: Lease) -> Iterator[Lease]:
    """Renew ``lease`` in the background for as long as the block runs."""
    keeper = _keeper()
    keeper.add(lease)
    try:
        yield lease
    finally:
        keeper.discard(lease)
