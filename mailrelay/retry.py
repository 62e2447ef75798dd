"""The retry policy, in one place: what a failed attempt turns into.

Exponential backoff with full jitter (a random wait between 0 and base·2^(n-1), capped),
a maximum number of attempts and a maximum age counted from intake. A provider's
Retry-After is honored exactly: the next attempt is never earlier. Permanent codes never
retry.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from mailrelay.config import Settings
from mailrelay.errors import MailrelayError, ProviderError
from mailrelay.store.outbox import Outcome
from mailrelay.store.states import State

MIN_WAIT_SECONDS = 1.0
# After an attempt that may have reached the provider, wait at least this long before
# asking it: a message accepted a moment ago may not be searchable yet.
SETTLE_SECONDS = 5.0
# A revoked grant is the account's trouble, not the message's: its messages wait for
# `mailrelay auth reconnect` (which resumes them) until their retry window closes.
PARKED_CODE = "auth_revoked"


@dataclass(frozen=True)
class RetryLimits:
    max_attempts: int
    max_age: dt.timedelta
    base: float
    cap: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryLimits:
        return cls(settings.retry_max_attempts, dt.timedelta(seconds=settings.retry_max_age),
                   settings.retry_base, settings.retry_cap)


def backoff(attempt: int, limits: RetryLimits, rng: random.Random | None = None) -> float:
    """Seconds to wait after attempt number ``attempt`` (1-based), full jitter."""
    ceiling = min(limits.cap, limits.base * 2 ** min(attempt - 1, 32))
    return max(MIN_WAIT_SECONDS, (rng or random).uniform(0, ceiling))


def decide(err: MailrelayError, *, attempt: int, created_at: dt.datetime, now: dt.datetime,
           limits: RetryLimits, rng: random.Random | None = None) -> Outcome:
    sent_unknown = isinstance(err, ProviderError) and err.sent_unknown
    if err.code == PARKED_CODE:
        return _park(err, created_at=created_at, now=now, limits=limits, verify=sent_unknown)
    if not err.retryable:
        return Outcome(State.FAILED, code=err.code, detail=str(err))
    if attempt >= limits.max_attempts:
        return Outcome(State.FAILED, code=err.code,
                       detail=f"{err} (gave up after {attempt} attempts)")
    wait = err.retry_after if err.retry_after is not None else backoff(attempt, limits, rng)
    if sent_unknown:
        wait = max(wait, SETTLE_SECONDS)
    at = now + dt.timedelta(seconds=max(wait, 0.0))
    if at > created_at + limits.max_age:
        return Outcome(State.FAILED, code=err.code,
                       detail=f"{err} (retry window of {limits.max_age} closed)")
    return Outcome(State.RETRYING, code=err.code, detail=str(err), next_attempt_at=at,
                   verify=sent_unknown)


def _park(err: MailrelayError, *, created_at: dt.datetime, now: dt.datetime, limits: RetryLimits,
          verify: bool) -> Outcome:
    deadline = created_at + limits.max_age
    if now >= deadline:
        return Outcome(State.FAILED, code=err.code,
                       detail=f"{err} (not reconnected within the retry window of {limits.max_age})")
    # Parked until the deadline: the reconciler's last try then fails it, unless a
    # reconnect resumed it before.
    return Outcome(State.RETRYING, code=err.code, detail=f"{err} (parked until reconnected)",
                   next_attempt_at=deadline, verify=verify)
