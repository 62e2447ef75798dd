"""A rollout's settings: defaults, what operators may set, and the provider's error codes.

Percentages are kept in basis points (1% = 100 bp) so that buckets compare as integers;
operators write percents (``--percent 0.5``, ``--ladder 1,5,10,25,50,100``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mailrelay.errors import CODES
from mailrelay.store.rollouts import RolloutRow

FULL = 10_000  # 100% in basis points
MODES = ("enforce", "dry_run")
STATES = ("running", "paused", "aborted", "complete")

DEFAULT_LADDER = (100, 500, 1000, 2500, 5000, FULL)

# The codes that count against the provider under rollout: the provider (or the path to
# it) failed, whoever sent what. Left out on purpose, because the sender or its account
# causes them and they say nothing about the provider: invalid_recipient,
# message_too_large, permission_denied, provider_rejected (the provider refused this
# message's content), auth_revoked, invalid_credentials, account_disabled,
# unknown_account, rate_limited (the mailbox's own quota), and every intake code.
PROVIDER_ERROR_CODES = ("provider_unavailable", "provider_timeout", "network_error",
                        "auth_expired", "internal_error")


@dataclass(frozen=True)
class Policy:
    """How the controller judges one rollout (a rollout row's settings)."""

    ladder: tuple[int, ...] = DEFAULT_LADDER
    dwell_seconds: int = 600
    window_seconds: int = 300
    error_warn: float = 0.01
    error_critical: float = 0.05
    latency_p95: float = 10.0
    min_rate: float = 0.1
    consecutive_successes: int = 5
    failure_limit: int = 2
    consecutive_error_limit: int = 4
    error_codes: tuple[str, ...] = PROVIDER_ERROR_CODES

    def next_step(self, percent_bp: int) -> int | None:
        """The first ladder step above ``percent_bp``, or None at the top."""
        return next((step for step in self.ladder if step > percent_bp), None)


DEFAULTS = Policy()


def policy_of(row: RolloutRow) -> Policy:
    """The policy a stored rollout is judged by (its error codes, else the default list)."""
    return Policy(ladder=row.ladder, dwell_seconds=row.dwell_seconds,
                  window_seconds=row.window_seconds, error_warn=row.error_warn,
                  error_critical=row.error_critical, latency_p95=row.latency_p95,
                  min_rate=row.min_rate, consecutive_successes=row.consecutive_successes,
                  failure_limit=row.failure_limit,
                  consecutive_error_limit=row.consecutive_error_limit,
                  error_codes=row.error_codes or PROVIDER_ERROR_CODES)


class SettingError(ValueError):
    """An operator's value that a rollout cannot take; the message says which and why."""


def percent_to_bp(value: float, what: str = "percent") -> int:
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise SettingError(f"{what} must be from 0 to 100, not {value}")
    bp = round(value * 100)
    if abs(bp - value * 100) > 1e-6:
        raise SettingError(f"{what} {value}: at most two decimals (basis points)")
    return bp


def bp_to_percent(bp: int | None) -> float | None:
    """Basis points as a percent: 2500 → 25, 50 → 0.5."""
    if bp is None:
        return None
    return bp // 100 if bp % 100 == 0 else bp / 100


def parse_ladder(text: str) -> tuple[int, ...]:
    """``1,5,25,100`` → basis points, strictly ascending, each above 0."""
    try:
        steps = tuple(percent_to_bp(float(part), "a ladder step") for part in text.split(",")
                      if part.strip())
    except ValueError as err:
        raise SettingError(f"--ladder {text!r}: {err}") from None
    if not steps:
        raise SettingError("--ladder needs at least one step")
    if any(step <= 0 for step in steps) or list(steps) != sorted(set(steps)):
        raise SettingError(f"--ladder {text!r}: steps must be above 0 and strictly ascending")
    return steps


def parse_codes(text: str) -> tuple[str, ...]:
    codes = tuple(code.strip() for code in text.split(",") if code.strip())
    unknown = [code for code in codes if code not in CODES]
    if unknown:
        raise SettingError(f"unknown error codes: {', '.join(unknown)}")
    if not codes:
        raise SettingError("give at least one error code")
    return codes


def check(policy: Policy) -> None:
    """Settings that cannot work together; raises SettingError."""
    if not 0 <= policy.error_warn <= policy.error_critical <= 1:
        raise SettingError("need 0 <= --error-warn <= --error-critical <= 1")
    if policy.latency_p95 <= 0:
        raise SettingError("--latency-p95 must be above 0 seconds")
    if policy.min_rate <= 0:
        raise SettingError("--min-rate must be above 0 sends per second: a rollout is never "
                           "promoted without traffic")
    if policy.window_seconds < 5:
        raise SettingError("--window must be at least 5 seconds (4 scrape intervals or more)")
    if policy.dwell_seconds < 0:
        raise SettingError("--dwell must not be negative")
    for name in ("consecutive_successes", "failure_limit", "consecutive_error_limit"):
        if getattr(policy, name) < 1:
            raise SettingError(f"--{name.replace('_', '-')} must be at least 1")
