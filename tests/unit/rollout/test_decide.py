"""The controller's decision function, as a table of cases."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

import pytest

from mailrelay.rollout.decide import (
    COMPLETE,
    HOLD,
    PROMOTE,
    ROLLBACK,
    WARN,
    Measurement,
    Standing,
    decide,
)
from mailrelay.rollout.policy import Policy

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
POLICY = Policy(ladder=(100, 500, 2500, 10_000), dwell_seconds=600, window_seconds=300,
                error_warn=0.01, error_critical=0.05, latency_p95=2.0, min_rate=0.1,
                consecutive_successes=3, failure_limit=2, consecutive_error_limit=4)
# At 5%, 20 minutes in, two healthy evaluations behind it: the next healthy one promotes.
READY = Standing(mode="enforce", state="running", percent_bp=500,
                 step_started_at=NOW - dt.timedelta(minutes=20), successes=2)
HEALTHY = Measurement(traffic=3.0, error_ratio=0.002, latency_p95=0.4)


def standing(**changes: Any) -> Standing:
    return dataclasses.replace(READY, **changes)


def measured(**changes: Any) -> Measurement:
    return dataclasses.replace(HEALTHY, **changes)


# name, standing, measurement, decision, percent after, state after, successes, failures
CASES = [
    ("healthy promotes to the next step", READY, HEALTHY, PROMOTE, 2500, "running", 0, 0),
    ("healthy from a percent off the ladder promotes to the step above", standing(percent_bp=700),
     HEALTHY, PROMOTE, 2500, "running", 0, 0),
    ("warn over the warning ratio, no promotion", READY, measured(error_ratio=0.02), WARN, 500,
     "running", 0, 0),
    ("a first critical error ratio warns and counts a failure", READY,
     measured(error_ratio=0.10), WARN, 500, "running", 0, 1),
    ("critical errors at the failure limit roll back to 0", standing(failures=1),
     measured(error_ratio=0.10), ROLLBACK, 0, "aborted", 0, 2),
    ("p95 over its bound is a failure", standing(failures=1), measured(latency_p95=5.0),
     ROLLBACK, 0, "aborted", 0, 2),
    ("p95 in the histogram's last bucket (+Inf) is a failure", standing(failures=1),
     measured(latency_p95=math.inf), ROLLBACK, 0, "aborted", 0, 2),
    ("critical errors fail even when the p95 is missing", standing(failures=1),
     measured(error_ratio=0.5, latency_p95=None), ROLLBACK, 0, "aborted", 0, 2),
    ("no traffic holds and breaks the healthy run", READY, measured(traffic=0.0), HOLD, 500,
     "running", 0, 0),
    ("traffic under the guard never rolls back, even at 100% errors", standing(failures=1),
     measured(traffic=0.05, error_ratio=1.0), HOLD, 500, "running", 0, 1),
    ("no data holds", READY, Measurement(None, None, None), HOLD, 500, "running", 0, 0),
    ("NaN holds", READY, measured(error_ratio=math.nan, latency_p95=math.nan), HOLD, 500,
     "running", 0, 0),
    ("a missing p95 with healthy errors holds", READY, measured(latency_p95=None), HOLD, 500,
     "running", 0, 0),
    ("Prometheus error holds", standing(failures=1),
     Measurement(None, None, None, error="HTTP 503"), HOLD, 500, "running", 0, 1),
    ("Prometheus timeout holds", READY,
     Measurement(None, None, None, error="no answer within 5s"), HOLD, 500, "running", 0, 0),
    ("dwell not reached holds, counting the success",
     standing(step_started_at=NOW - dt.timedelta(minutes=3)), HEALTHY, HOLD, 500, "running", 3, 0),
    ("consecutive successes not reached holds", standing(successes=0), HEALTHY, HOLD, 500,
     "running", 1, 0),
    ("healthy at 100% completes", standing(percent_bp=10_000), HEALTHY, COMPLETE, 10_000,
     "complete", 3, 0),
    ("healthy at the last step before 100% promotes to 100%", standing(percent_bp=2500),
     HEALTHY, PROMOTE, 10_000, "running", 0, 0),
    ("paused holds without looking", standing(state="paused"), measured(error_ratio=0.9), HOLD,
     500, "paused", 2, 0),
    ("aborted holds without looking", standing(state="aborted", percent_bp=0), HEALTHY, HOLD, 0,
     "aborted", 2, 0),
    ("complete holds", standing(state="complete", percent_bp=10_000), HEALTHY, HOLD, 10_000,
     "complete", 2, 0),
]


@pytest.mark.parametrize(("name", "before", "measurement", "decision", "percent", "state",
                          "successes", "failures"), CASES, ids=[c[0] for c in CASES])
def test_decision_table(name: str, before: Standing, measurement: Measurement, decision: str,
                        percent: int, state: str, successes: int, failures: int) -> None:
    verdict = decide(POLICY, before, measurement, NOW)
    assert (verdict.decision, verdict.percent_bp, verdict.state) == (decision, percent, state), \
        verdict.reason
    assert (verdict.successes, verdict.failures) == (successes, failures), verdict.reason
    assert verdict.reason
    assert not verdict.dry_run


def test_top_of_a_ladder_under_100_percent_holds() -> None:
    short = dataclasses.replace(POLICY, ladder=(100, 500, 2500))
    verdict = decide(short, standing(percent_bp=2500), HEALTHY, NOW)
    assert (verdict.decision, verdict.percent_bp) == (HOLD, 2500)
    assert "top of the ladder" in verdict.reason


def test_query_errors_count_to_needing_attention_and_a_good_answer_clears_them() -> None:
    failing = Measurement(None, None, None, error="unreachable (ConnectionError)")
    current = READY
    seen = []
    for _ in range(POLICY.consecutive_error_limit):
        verdict = decide(POLICY, current, failing, NOW)
        assert verdict.decision == HOLD and verdict.percent_bp == 500
        seen.append(verdict.needs_attention)
        current = standing(query_errors=verdict.query_errors, successes=verdict.successes)
    assert seen == [False, False, False, True]
    recovered = decide(POLICY, current, HEALTHY, NOW)
    assert (recovered.query_errors, recovered.needs_attention) == (0, False)


def test_dry_run_records_what_enforce_would_do_and_changes_nothing() -> None:
    dry = standing(mode="dry_run")
    promote = decide(POLICY, dry, HEALTHY, NOW)
    assert (promote.decision, promote.percent_bp, promote.state, promote.dry_run) == (
        PROMOTE, 500, "running", True)
    assert promote.reason.startswith("dry run, would promote (5% → 25%)")
    rollback = decide(POLICY, dataclasses.replace(dry, failures=1), measured(error_ratio=0.2), NOW)
    assert (rollback.decision, rollback.percent_bp, rollback.state) == (ROLLBACK, 500, "running")
    assert (rollback.successes, rollback.failures, rollback.new_step) == (0, 0, True)
    hold = decide(POLICY, dry, measured(traffic=0.0), NOW)
    assert (hold.decision, hold.percent_bp) == (HOLD, 500) and hold.reason.startswith("dry run: ")


def test_promotion_restarts_the_dwell_clock_and_a_rollback_the_step() -> None:
    assert decide(POLICY, READY, HEALTHY, NOW).new_step
    assert not decide(POLICY, standing(successes=0), HEALTHY, NOW).new_step
    assert decide(POLICY, standing(failures=1), measured(error_ratio=0.3), NOW).new_step


def test_inputs_are_json_safe() -> None:
    assert Measurement(1.0, math.nan, math.inf).inputs() == {
        "traffic": 1.0, "error_ratio": None, "latency_p95": "+Inf"}
    assert Measurement(None, None, None, error="x").inputs()["error"] == "x"
