"""The controller's decision: pure, from a rollout's standing and one measurement.

In the order checked:

- not ``running`` (paused, aborted, complete): **hold**, nothing changes;
- the query failed (Prometheus unreachable, slow, answering an error): **hold**; it counts
  toward ``consecutive_error_limit``, after which the rollout needs attention;
- a measurement that fails (error ratio over the critical threshold, or p95 over its
  bound): a failure at this step; at ``failure_limit`` failures **rollback** to 0 and
  ``aborted``, before that **warn**;
- traffic under the guard, no data, NaN: **hold** (inconclusive). Missing data never
  promotes and never rolls back; it also breaks the run of healthy evaluations, so a
  rollout is never promoted on evaluations that saw no traffic;
- error ratio over the warning threshold: **warn**, no promotion;
- healthy: one more success; **promote** to the next ladder step after
  ``consecutive_successes`` healthy evaluations in a row and ``dwell_seconds`` at this
  step; at 100% the same conditions make it **complete**; at a ladder's top under 100%,
  **hold**.

In ``dry_run`` mode the same decision is computed and recorded, but the percentage and
the state never change.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace

from mailrelay.rollout.policy import FULL, Policy

PROMOTE, WARN, ROLLBACK, HOLD, COMPLETE = "promote", "warn", "rollback", "hold", "complete"
DECISIONS = (PROMOTE, WARN, ROLLBACK, HOLD, COMPLETE)


@dataclass(frozen=True)
class Standing:
    """Where a rollout stands before the evaluation."""

    mode: str
    state: str
    percent_bp: int
    step_started_at: dt.datetime
    successes: int = 0
    failures: int = 0
    query_errors: int = 0


@dataclass(frozen=True)
class Measurement:
    """What Prometheus said over the window: sends per second, the share of them that
    failed with one of the provider's error codes, the p95 send time in seconds. ``error``
    says why the query failed (then the numbers mean nothing)."""

    traffic: float | None
    error_ratio: float | None
    latency_p95: float | None
    error: str | None = None

    def inputs(self) -> dict[str, float | str | None]:
        """The inputs as JSON can hold them (NaN becomes None)."""
        def clean(value: float | None) -> float | str | None:
            if value is None or math.isnan(value):
                return None
            return value if math.isfinite(value) else "+Inf"  # JSON has no infinity

        found: dict[str, float | str | None] = {
            "traffic": clean(self.traffic), "error_ratio": clean(self.error_ratio),
            "latency_p95": clean(self.latency_p95)}
        if self.error:
            found["error"] = self.error
        return found


@dataclass(frozen=True)
class Verdict:
    decision: str
    reason: str
    percent_bp: int
    state: str
    successes: int
    failures: int
    query_errors: int
    # A new step began (the dwell clock restarts).
    new_step: bool = False
    needs_attention: bool = False
    dry_run: bool = False


def _known(value: float | None) -> bool:
    # +Inf is data (a p95 in the histogram's last bucket: slower than any bound).
    return value is not None and not math.isnan(value)


def _pct(bp: int) -> str:
    return f"{bp / 100:g}%"


def decide(policy: Policy, standing: Standing, measured: Measurement, now: dt.datetime) -> Verdict:
    verdict = _decide(policy, standing, measured, now)
    verdict = replace(verdict, needs_attention=verdict.query_errors >= policy.consecutive_error_limit)
    if standing.mode != "dry_run" or standing.state != "running":
        return verdict
    # Dry run: the decision is recorded as what enforce would do; nothing moves.
    moved = verdict.decision in (PROMOTE, ROLLBACK, COMPLETE)
    reason = (f"dry run, would {verdict.decision} ({_pct(standing.percent_bp)} → "
              f"{_pct(verdict.percent_bp)}): {verdict.reason}" if moved
              else f"dry run: {verdict.reason}")
    verdict = replace(verdict, reason=reason, percent_bp=standing.percent_bp,
                      state=standing.state, dry_run=True)
    # As if the step had changed: the counters start again, so that the history shows
    # how often enforce would have moved.
    return replace(verdict, successes=0, failures=0, new_step=True) if moved else verdict


def _decide(policy: Policy, standing: Standing, measured: Measurement, now: dt.datetime) -> Verdict:
    base = Verdict(HOLD, "", standing.percent_bp, standing.state, standing.successes,
                   standing.failures, standing.query_errors)
    if standing.state != "running":
        return replace(base, reason=f"{standing.state}: not evaluated")
    if measured.error is not None:
        errors = standing.query_errors + 1
        return replace(base, successes=0, query_errors=errors, reason=(
            f"inconclusive, Prometheus query failed ({measured.error}); "
            f"{errors} of {policy.consecutive_error_limit} in a row before it needs attention"))
    base = replace(base, query_errors=0)
    failing = _failing(policy, measured)
    if failing:
        failures = standing.failures + 1
        if failures >= policy.failure_limit:
            return replace(base, decision=ROLLBACK, percent_bp=0, state="aborted", successes=0,
                           failures=failures, new_step=True, reason=(
                               f"{failing}; failure {failures} of {policy.failure_limit} at "
                               f"{_pct(standing.percent_bp)}: rolled back to 0%"))
        return replace(base, decision=WARN, successes=0, failures=failures, reason=(
            f"{failing}; failure {failures} of {policy.failure_limit} at "
            f"{_pct(standing.percent_bp)}"))
    inconclusive = _inconclusive(policy, measured)
    if inconclusive:
        return replace(base, successes=0, reason=f"inconclusive, {inconclusive}")
    assert measured.error_ratio is not None  # _inconclusive checked it
    if measured.error_ratio > policy.error_warn:
        return replace(base, decision=WARN, successes=0, reason=(
            f"error ratio {measured.error_ratio:.2%} over the warning threshold "
            f"{policy.error_warn:.2%}; not promoted"))
    return _healthy(policy, standing, replace(base, successes=standing.successes + 1), now)


def _failing(policy: Policy, measured: Measurement) -> str | None:
    """Why a measurement fails, from what it does say (a missing number never fails)."""
    low_traffic = not _known(measured.traffic) or (measured.traffic or 0) < policy.min_rate
    if low_traffic:
        return None  # too few sends for a ratio or a percentile to mean anything
    if _known(measured.error_ratio) and (measured.error_ratio or 0) > policy.error_critical:
        return (f"error ratio {measured.error_ratio:.2%} over the critical threshold "
                f"{policy.error_critical:.2%}")
    if _known(measured.latency_p95) and (measured.latency_p95 or 0) > policy.latency_p95:
        return f"p95 {measured.latency_p95:.3g}s over the bound {policy.latency_p95:g}s"
    return None


def _inconclusive(policy: Policy, measured: Measurement) -> str | None:
    if not _known(measured.traffic):
        return "no data for the provider's traffic"
    assert measured.traffic is not None
    if measured.traffic < policy.min_rate:
        return (f"traffic {measured.traffic:.3g}/s under the guard {policy.min_rate:g}/s "
                f"over {policy.window_seconds}s")
    if not _known(measured.error_ratio):
        return "no data for the error ratio"
    if not _known(measured.latency_p95):
        return "no data for the p95 latency"
    return None


def _healthy(policy: Policy, standing: Standing, base: Verdict, now: dt.datetime) -> Verdict:
    target = FULL if standing.percent_bp >= FULL else policy.next_step(standing.percent_bp)
    if target is None:
        return replace(base, reason=f"healthy; at the top of the ladder ({_pct(standing.percent_bp)})")
    dwelt = (now - standing.step_started_at).total_seconds()
    waiting = []
    if base.successes < policy.consecutive_successes:
        waiting.append(f"{base.successes} of {policy.consecutive_successes} healthy evaluations")
    if dwelt < policy.dwell_seconds:
        waiting.append(f"{dwelt:.0f}s of {policy.dwell_seconds}s at this step")
    if waiting:
        return replace(base, reason="healthy; waiting for " + " and ".join(waiting))
    healthy = (f"healthy for {base.successes} evaluations and {dwelt:.0f}s at "
               f"{_pct(standing.percent_bp)}")
    if standing.percent_bp >= FULL:
        return replace(base, decision=COMPLETE, state="complete", reason=f"{healthy}: complete")
    return replace(base, decision=PROMOTE, percent_bp=target, successes=0, failures=0,
                   new_step=True, reason=f"{healthy}: promoted to {_pct(target)}")
