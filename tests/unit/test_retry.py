from __future__ import annotations

import datetime as dt
import random

import pytest

from mailrelay.errors import ProviderError
from mailrelay.retry import MIN_WAIT_SECONDS, RetryLimits, backoff, decide
from mailrelay.store.states import State

LIMITS = RetryLimits(max_attempts=5, max_age=dt.timedelta(hours=1), base=2, cap=60)
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60, 2 * 2 ** (attempt - 1))
        waits = [backoff(attempt, LIMITS, rng) for _ in range(200)]
        assert all(MIN_WAIT_SECONDS <= w <= max(ceiling, MIN_WAIT_SECONDS) for w in waits)
    late = [backoff(10, LIMITS, rng) for _ in range(500)]
    assert max(late) > 45 and min(late) < 15  # spread over the whole window, not clustered


def test_permanent_error_fails_at_once() -> None:
    outcome = decide(ProviderError("invalid_recipient"), attempt=1, created_at=NOW, now=NOW, limits=LIMITS)
    assert outcome.state is State.FAILED and outcome.code == "invalid_recipient"


def test_retry_after_is_honoured_exactly() -> None:
    err = ProviderError("rate_limited", retry_after=37)
    outcome = decide(err, attempt=1, created_at=NOW, now=NOW, limits=LIMITS)
    assert outcome.state is State.RETRYING
    assert outcome.next_attempt_at == NOW + dt.timedelta(seconds=37)


def test_attempts_run_out() -> None:
    outcome = decide(ProviderError("provider_unavailable"), attempt=5, created_at=NOW, now=NOW, limits=LIMITS)
    assert outcome.state is State.FAILED and "gave up after 5 attempts" in (outcome.detail or "")


def test_age_runs_out() -> None:
    err = ProviderError("provider_unavailable", retry_after=120)
    outcome = decide(err, attempt=1, created_at=NOW - dt.timedelta(minutes=59), now=NOW, limits=LIMITS)
    assert outcome.state is State.FAILED and "window" in (outcome.detail or "")


@pytest.mark.parametrize("sent_unknown", [True, False])
def test_unknown_outcome_asks_for_verification(sent_unknown: bool) -> None:
    err = ProviderError("provider_timeout", sent_unknown=sent_unknown)
    outcome = decide(err, attempt=1, created_at=NOW, now=NOW, limits=LIMITS)
    assert outcome.state is State.RETRYING and outcome.verify is sent_unknown


def test_a_revoked_grant_parks_the_message_until_the_retry_window_closes() -> None:
    outcome = decide(ProviderError("auth_revoked"), attempt=7, created_at=NOW,
                     now=NOW + dt.timedelta(minutes=5), limits=LIMITS)
    assert outcome.state is State.RETRYING and outcome.code == "auth_revoked"
    assert outcome.next_attempt_at == NOW + LIMITS.max_age  # no countdown: the reconciler's
    assert "parked" in (outcome.detail or "")
    closed = decide(ProviderError("auth_revoked"), attempt=8, created_at=NOW,
                    now=NOW + LIMITS.max_age, limits=LIMITS)
    assert closed.state is State.FAILED and "not reconnected" in (closed.detail or "")


def test_codes_have_their_own_attempt_budgets() -> None:
    def after(code: str, attempt: int) -> State:
        return decide(ProviderError(code), attempt=attempt, created_at=NOW, now=NOW,
                      limits=LIMITS, rng=random.Random(1)).state

    assert after("provider_unavailable", 4) is State.RETRYING
    assert after("provider_unavailable", 5) is State.FAILED  # the settings' 5
    assert after("rate_limited", 12) is State.RETRYING  # waiting is the cure: up to 20
    assert after("rate_limited", 20) is State.FAILED
    assert after("internal_error", 3) is State.FAILED


def test_a_code_policy_never_widens_the_cap_or_the_window() -> None:
    from mailrelay.retry import CODE_POLICIES, limits_for

    for code in CODE_POLICIES:
        limits = limits_for(code, LIMITS)
        assert limits.cap <= LIMITS.cap and limits.max_age == LIMITS.max_age
