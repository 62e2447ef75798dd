"""The retry policy, in one place: what a failed attempt turns into.

Exponential backoff with full jitter (a random wait between 0 and base·2^(n-1), capped),
a maximum number of attempts and a maximum age counted from intake, adjusted per error
code (``CODE_POLICIES``). A provider's Retry-After is honored exactly: the next attempt
is never earlier. Permanent codes never retry.
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
# A revoked grant is the account's trouble, not the message's: its messages wait for
# `mailrelay auth reconnect` (which resumes them) until their retry window closes.
PARKED_CODE = "auth_revoked"


@dataclass(frozen=True)
class RetryLimits:
    max_attempts: int
    max_age: dt.timedelta
    base: float
    cap: float
    # After an attempt that may have reached the provider, wait at least this long before
    # asking it: a message accepted a moment ago may not be searchable yet
    # (MAILRELAY_VERIFY_SETTLE_SECONDS).
    settle: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryLimits:
        return cls(settings.retry_max_attempts, dt.timedelta(seconds=settings.retry_max_age),
                   settings.retry_base, settings.retry_cap, settings.verify_settle_seconds)


@dataclass(frozen=True)
class CodePolicy:
    """How one retryable code departs from the settings' limits (None: the setting)."""

    max_attempts: int | None = None
    base: float | None = None
    cap: float | None = None


# Per code, what retrying it is worth. A code not listed follows the settings.
CODE_POLICIES: dict[str, CodePolicy] = {
    # The provider names the wait (Retry-After) and waiting is the cure: more attempts.
    "rate_limited": CodePolicy(max_attempts=20),
    # A token that was just refreshed and refused again will not get better soon.
    "auth_expired": CodePolicy(max_attempts=3, base=5, cap=60),
    # A bug or an unexpected answer on mailrelay's side: a few tries, then on-call.
    "internal_error": CodePolicy(max_attempts=3, base=10, cap=120),
    # The provider did not answer in time; it may be overloaded: back off further.
    "provider_timeout": CodePolicy(base=5),
}


def limits_for(code: str, limits: RetryLimits) -> RetryLimits:
    policy = CODE_POLICIES.get(code)
    if policy is None:
        return limits
    return RetryLimits(
        max_attempts=policy.max_attempts or limits.max_attempts, max_age=limits.max_age,
        base=policy.base if policy.base is not None else limits.base,
        cap=min(policy.cap, limits.cap) if policy.cap is not None else limits.cap,
        settle=limits.settle)


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
    limits = limits_for(err.code, limits)
    if attempt >= limits.max_attempts:
        return Outcome(State.FAILED, code=err.code,
                       detail=f"{err} (gave up after {attempt} attempts)")
    wait = err.retry_after if err.retry_after is not None else backoff(attempt, limits, rng)
    if sent_unknown:
        wait = max(wait, limits.settle)
    wait = max(wait, 0.0)
    at = now + dt.timedelta(seconds=wait)
    if at > created_at + limits.max_age:
        return Outcome(State.FAILED, code=err.code,
                       detail=f"{err} (retry window of {limits.max_age} closed)")
    return Outcome(State.RETRYING, code=err.code, detail=str(err), next_attempt_at=at,
                   verify=sent_unknown, wait=wait)


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
