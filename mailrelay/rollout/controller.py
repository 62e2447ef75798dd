"""One evaluation of each rollout: measure, decide, apply once, export, reroute.

Beat runs this every minute (``mailrelay.rollout_evaluate`` on ``mailrelay.control``);
``mailrelay rollout evaluate`` runs it on demand. For a ``running`` rollout it takes the
rollout's Redis lock (so that two controllers, two beats by mistake, do not even try at
once; without Redis it goes on, the database decides), asks Prometheus, and applies the
decision as one UPDATE conditional on the version it read, with its decision row. Of two
controllers that read the same version, one applies and the other is told so. An
``aborted`` rollout is not evaluated, but each run moves the waiting messages that may
still move to its fallback (intake processes keep a cached row for up to 10 s after a
rollback, and what they admitted then is caught by the next run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any

import redis

from mailrelay.config import get_settings
from mailrelay.logctx import get_logger
from mailrelay.metrics import (
    ROLLOUT_DECISIONS,
    ROLLOUT_LAST_EVALUATION,
    ROLLOUT_NEEDS_ATTENTION,
    ROLLOUT_PERCENT,
)
from mailrelay.redis_client import get_redis, key
from mailrelay.rollout import decide as decisions
from mailrelay.rollout import reroute
from mailrelay.rollout.decide import Measurement, Standing, Verdict
from mailrelay.rollout.measure import measure
from mailrelay.rollout.policy import bp_to_percent, policy_of
from mailrelay.rollout.reroute import Enqueue
from mailrelay.store import rollouts
from mailrelay.store.outbox import utcnow
from mailrelay.store.rollouts import DecisionRecord, RolloutRow

log = get_logger(__name__)

ACTOR = "controller"


@dataclass
class Evaluation:
    """One rollout's evaluation: the row as read, the verdict as reported (what was
    applied, or the row unchanged when nothing was), what Prometheus said."""

    row: RolloutRow
    verdict: Verdict
    inputs: dict[str, Any]
    # Written to the database (False: --dry-run, not running, skipped, or lost to
    # another writer).
    applied: bool = False
    skipped: bool = False
    rerouted: int = 0

    @property
    def provider(self) -> str:
        return self.row.provider

    @property
    def decision(self) -> str:
        return self.verdict.decision

    def as_dict(self) -> dict[str, Any]:
        """As `rollout evaluate --json` prints it."""
        return {"provider": self.row.provider, "decision": self.verdict.decision,
                "reason": self.verdict.reason,
                "inputs": {"traffic": None, "error_ratio": None, "latency_p95": None,
                           **self.inputs},
                "percent_before": bp_to_percent(self.row.percent_bp),
                "percent_after": bp_to_percent(self.verdict.percent_bp), "mode": self.row.mode,
                "state_before": self.row.state, "state_after": self.verdict.state,
                "applied": self.applied, "skipped": self.skipped, "dry_run": self.verdict.dry_run,
                "needs_attention": self.verdict.needs_attention, "rerouted": self.rerouted}


def standing_of(row: RolloutRow) -> Standing:
    return Standing(mode=row.mode, state=row.state, percent_bp=row.percent_bp,
                    step_started_at=row.step_started_at, successes=row.successes,
                    failures=row.failures, query_errors=row.query_errors)


def evaluate(provider: str | None = None, *, dry_run: bool = False,
             enqueue: Enqueue | None = None, now: dt.datetime | None = None) -> list[Evaluation]:
    """Evaluate every rollout (or ``provider``'s) once. ``dry_run``: measure and decide,
    write nothing, move nothing. ``enqueue(id, provider)`` publishes rerouted messages."""
    found = rollouts.all_rollouts()
    if provider is not None:
        found = [row for row in found if row.provider == provider]
    results = []
    for row in found:
        result = _one(row, dry_run=dry_run, enqueue=enqueue, now=now)
        results.append(result)
        if not dry_run:
            _export(result)
    return results


def _unchanged(row: RolloutRow, reason: str) -> Verdict:
    """The row as it stands, reported as a hold."""
    return Verdict(decisions.HOLD, reason, row.percent_bp, row.state, row.successes,
                   row.failures, row.query_errors,
                   needs_attention=row.query_errors >= row.consecutive_error_limit)


def _one(row: RolloutRow, *, dry_run: bool, enqueue: Enqueue | None,
         now: dt.datetime | None) -> Evaluation:
    if row.state != "running":
        result = Evaluation(row, _unchanged(row, f"{row.state}: not evaluated"), {})
        if row.state == "aborted" and not dry_run:
            result.rerouted = reroute.to_fallback(row, actor=ACTOR, enqueue=enqueue).moved
        return result
    if dry_run:
        verdict, measured = _measure_and_decide(row, now)
        return Evaluation(row, verdict, measured.inputs())
    lock = _lock(row.provider)
    if lock is False:
        return Evaluation(row, _unchanged(
            row, "another controller is evaluating this rollout now; skipped"), {}, skipped=True)
    try:
        verdict, measured = _measure_and_decide(row, now)
        result = Evaluation(row, verdict, measured.inputs())
        result.applied = _apply(row, verdict, measured, now=now)
        if not result.applied:
            result.verdict = _unchanged(
                row, f"{verdict.reason} (not applied: the rollout changed meanwhile)")
        elif verdict.decision == decisions.ROLLBACK and not verdict.dry_run:
            fresh = rollouts.get(row.provider)
            if fresh is not None:
                result.rerouted = reroute.to_fallback(fresh, actor=ACTOR, enqueue=enqueue).moved
        return result
    finally:
        _unlock(lock)


def _measure_and_decide(row: RolloutRow, now: dt.datetime | None) -> tuple[Verdict, Measurement]:
    policy = policy_of(row)
    settings = get_settings()
    measured = measure(row.provider, policy, url=settings.prometheus_url,
                       timeout=settings.prometheus_timeout)
    # The clock is read after the query: a slow Prometheus must not shorten the dwell.
    return decisions.decide(policy, standing_of(row), measured, now or utcnow()), measured


def _apply(row: RolloutRow, verdict: Verdict, measured: Measurement, *,
           now: dt.datetime | None) -> bool:
    now = now or utcnow()
    values: dict[str, Any] = {
        "percent_bp": verdict.percent_bp, "state": verdict.state, "successes": verdict.successes,
        "failures": verdict.failures, "query_errors": verdict.query_errors,
        "last_evaluated_at": now}
    if verdict.new_step:
        values["step_started_at"] = now
    record = DecisionRecord(decision=verdict.decision, reason=verdict.reason, actor=ACTOR,
                            inputs=measured.inputs(), percent_before=row.percent_bp,
                            percent_after=verdict.percent_bp, state_after=verdict.state,
                            dry_run=verdict.dry_run)
    applied = rollouts.change(row.provider, row.version, values, record, now=now)
    if applied:
        ROLLOUT_DECISIONS.labels(provider=row.provider, decision=verdict.decision).inc()
        if verdict.decision != decisions.HOLD or verdict.needs_attention:
            log.warning("rollout %s: %s (%s)", row.provider, verdict.decision, verdict.reason)
    return applied


def _export(result: Evaluation) -> None:
    ROLLOUT_PERCENT.labels(provider=result.provider).set(result.verdict.percent_bp / 100)
    ROLLOUT_NEEDS_ATTENTION.labels(provider=result.provider).set(
        int(result.verdict.needs_attention))
    # Every rollout the run looked at, paused ones too: the "controller stalled" alert
    # is about the controller running, not about what it decided.
    ROLLOUT_LAST_EVALUATION.labels(provider=result.provider).set_to_current_time()
    # The rollback counter exists at 0 before the first rollback: a series born at 1 shows
    # no increase, and "rolled back" would miss the first one after a worker starts.
    ROLLOUT_DECISIONS.labels(provider=result.provider, decision=decisions.ROLLBACK)


def _lock(provider: str) -> Any:
    """The rollout's Redis lock (held), False when another controller holds it, None when
    Redis is away (the conditional update still makes one writer win)."""
    settings = get_settings()
    try:
        lock = get_redis().lock(key("lock", "rollout", provider),
                                timeout=3 * settings.prometheus_timeout + 60)
        return lock if lock.acquire(blocking=False) else False
    except redis.RedisError as err:
        log.warning("rollout lock unavailable (%s); relying on the database alone",
                    type(err).__name__)
        return None


def _unlock(lock: Any) -> None:
    if lock:
        # Expired, or Redis away: nothing left to release.
        with contextlib.suppress(redis.RedisError):
            lock.release()
