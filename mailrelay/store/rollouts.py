"""Rollout rows and their decisions: the statements, nothing else.

Every change of a rollout, by the controller or an operator, is one UPDATE conditional on
the row's ``version`` (which it increments) together with its ``rollout_decisions`` row,
in one transaction: of two writers that read the same version, one applies and the other
changes nothing and learns so (``False``). The row, not Redis, decides who goes where.

Rerouting after a rollback is here too, as statements on ``messages``: each message moves
in one UPDATE conditional on everything that makes it movable, with its audit row.
What counts as a fitting fallback is decided above (mailrelay.rollout).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import ACCOUNTS, ATTEMPTS, MESSAGES, ROLLOUT_DECISIONS, ROLLOUTS
from mailrelay.store.outbox import AccountRef, _audit, utcnow
from mailrelay.store.states import State

_r = ROLLOUTS.c
_d = ROLLOUT_DECISIONS.c
_m = MESSAGES.c
_fallback = ACCOUNTS.alias("fallback_account")


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part for part in (text or "").split(",") if part)


@dataclass(frozen=True)
class RolloutRow:
    """One rollout as stored, with its fallback account (None: no fallback, or the account
    named as fallback does not exist any more)."""

    provider: str
    mode: str
    state: str
    percent_bp: int
    salt: str
    internal_domains: tuple[str, ...]
    fallback: str | None
    ladder: tuple[int, ...]
    dwell_seconds: int
    window_seconds: int
    error_warn: float
    error_critical: float
    latency_p95: float
    min_rate: float
    consecutive_successes: int
    failure_limit: int
    consecutive_error_limit: int
    error_codes: tuple[str, ...] | None
    version: int
    step_started_at: dt.datetime
    successes: int
    failures: int
    query_errors: int
    last_evaluated_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    fallback_account: AccountRef | None = None


@dataclass(frozen=True)
class DecisionRecord:
    """What goes into ``rollout_decisions`` with a change."""

    decision: str
    reason: str
    actor: str
    inputs: dict[str, Any] = field(default_factory=dict)
    percent_before: int | None = None
    percent_after: int | None = None
    state_after: str | None = None
    dry_run: bool = False


def encode(values: dict[str, Any]) -> dict[str, Any]:
    """Python values (tuples for lists) as the columns store them."""
    out = dict(values)
    for name in ("internal_domains", "error_codes"):
        if name in out and out[name] is not None:
            out[name] = ",".join(out[name]) or None
    if "ladder" in out:
        out["ladder"] = ",".join(str(step) for step in out["ladder"])
    return out


def _row(row: Any) -> RolloutRow:
    fallback = None
    if row.fallback_id is not None:
        fallback = AccountRef(row.fallback_id, row.fallback_address, row.fallback_provider,
                              row.fallback_state, row.fallback_html_policy)
    return RolloutRow(
        provider=row.provider, mode=row.mode, state=row.state, percent_bp=row.percent_bp,
        salt=row.salt, internal_domains=_split(row.internal_domains), fallback=row.fallback,
        ladder=tuple(int(step) for step in _split(row.ladder)), dwell_seconds=row.dwell_seconds,
        window_seconds=row.window_seconds, error_warn=row.error_warn,
        error_critical=row.error_critical, latency_p95=row.latency_p95, min_rate=row.min_rate,
        consecutive_successes=row.consecutive_successes, failure_limit=row.failure_limit,
        consecutive_error_limit=row.consecutive_error_limit,
        error_codes=_split(row.error_codes) if row.error_codes is not None else None,
        version=row.version, step_started_at=row.step_started_at, successes=row.successes,
        failures=row.failures, query_errors=row.query_errors,
        last_evaluated_at=row.last_evaluated_at, created_at=row.created_at,
        updated_at=row.updated_at, fallback_account=fallback)


_SELECT = (
    select(ROLLOUTS, _fallback.c.id.label("fallback_id"), _fallback.c.address.label("fallback_address"),
           _fallback.c.provider.label("fallback_provider"), _fallback.c.state.label("fallback_state"),
           _fallback.c.html_policy.label("fallback_html_policy"))
    .select_from(ROLLOUTS.outerjoin(_fallback, _fallback.c.address == _r.fallback))
    .order_by(_r.provider)
)


def all_rollouts() -> list[RolloutRow]:
    """Every rollout with its fallback account: one query (the gate's cache reads this)."""
    with db_errors(), get_engine().connect() as conn:
        return [_row(row) for row in conn.execute(_SELECT)]


def get(provider: str) -> RolloutRow | None:
    with db_errors(), get_engine().connect() as conn:
        row = conn.execute(_SELECT.where(_r.provider == provider)).first()
    return _row(row) if row else None


def _record(conn: Connection, provider: str, record: DecisionRecord, *, now: dt.datetime,
            version: int | None) -> None:
    conn.execute(insert(ROLLOUT_DECISIONS).values(
        provider=provider, at=now, decision=record.decision, reason=record.reason,
        inputs=json.dumps(record.inputs, sort_keys=True, default=str) if record.inputs else None,
        percent_before=record.percent_before, percent_after=record.percent_after,
        state_after=record.state_after, dry_run=record.dry_run, actor=record.actor[:200],
        version=version))


def create(provider: str, values: dict[str, Any], record: DecisionRecord, *,
           now: dt.datetime | None = None) -> bool:
    """Insert a new rollout (version 1) with its decision row; False if one exists."""
    now = now or utcnow()
    row = {**encode(values), "provider": provider, "version": 1, "created_at": now,
           "updated_at": now}
    try:
        with db_errors(), get_engine().begin() as conn:
            conn.execute(insert(ROLLOUTS).values(row))
            _record(conn, provider, record, now=now, version=1)
    except IntegrityError:
        return False
    return True


def change(provider: str, version: int, values: dict[str, Any], record: DecisionRecord, *,
           now: dt.datetime | None = None) -> bool:
    """Apply ``values`` if the row is still at ``version``, with its decision row; one
    transaction. False (nothing written) when someone else changed it first."""
    now = now or utcnow()
    with db_errors(), get_engine().begin() as conn:
        moved = conn.execute(
            update(ROLLOUTS).where(_r.provider == provider, _r.version == version)
            .values({**encode(values), "version": version + 1, "updated_at": now})).rowcount
        if not moved:
            return False
        _record(conn, provider, record, now=now, version=version + 1)
    return True


def remove(provider: str, version: int, record: DecisionRecord, *,
           now: dt.datetime | None = None) -> bool:
    """Delete the rollout if still at ``version``; its decisions stay, with this one."""
    now = now or utcnow()
    with db_errors(), get_engine().begin() as conn:
        gone = conn.execute(delete(ROLLOUTS).where(_r.provider == provider,
                                                   _r.version == version)).rowcount
        if not gone:
            return False
        _record(conn, provider, record, now=now, version=None)
    return True


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _decision_dict(row: Any) -> dict[str, Any]:
    return {"provider": row.provider, "at": _iso(row.at), "decision": row.decision,
            "reason": row.reason, "inputs": json.loads(row.inputs) if row.inputs else {},
            "percent_before": row.percent_before, "percent_after": row.percent_after,
            "state_after": row.state_after, "dry_run": bool(row.dry_run), "actor": row.actor,
            "version": row.version}


def decisions(provider: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """Newest first (percents in basis points, as stored)."""
    query = select(ROLLOUT_DECISIONS).order_by(_d.id.desc()).limit(limit)
    if provider:
        query = query.where(_d.provider == provider)
    with db_errors(), get_engine().connect() as conn:
        return [_decision_dict(row) for row in conn.execute(query)]


def last_decisions() -> dict[str, dict[str, Any]]:
    """The newest decision of each provider."""
    newest = select(func.max(_d.id)).group_by(_d.provider)
    with db_errors(), get_engine().connect() as conn:
        rows = conn.execute(select(ROLLOUT_DECISIONS).where(_d.id.in_(newest))).all()
    return {row.provider: _decision_dict(row) for row in rows}


# --- rerouting after a rollback ----------------------------------------------------------

_WAITING = (State.QUEUED.value, State.RETRYING.value)
_UNSETTLED_ATTEMPT = (
    select(ATTEMPTS.c.id)
    .where(ATTEMPTS.c.message_id == _m.id,
           ATTEMPTS.c.outcome.is_(None) | (ATTEMPTS.c.outcome == "unknown"))
    .exists()
)


def _movable(provider: str) -> tuple[Any, ...]:
    """A message that waits for ``provider`` on its sender's own account and that no
    attempt may have reached the provider with."""
    return (_m.provider == provider, _m.state.in_(_WAITING), _m.via_address.is_(None),
            _m.maybe_sent.is_(False), _m.verify_before_send.is_(False), _m.lease_owner.is_(None),
            ~_UNSETTLED_ATTEMPT)


@dataclass(frozen=True)
class Waiting:
    id: str
    payload: str | None
    route: str | None


def movable(provider: str, *, limit: int = 500) -> list[Waiting]:
    """Messages that could move to a fallback (the oldest first), with their payload for
    the caller's capability check."""
    query = (select(_m.id, _m.payload, _m.route).where(*_movable(provider))
             .order_by(_m.created_at).limit(limit))
    with db_errors(), get_engine().connect() as conn:
        return [Waiting(row.id, row.payload, row.route) for row in conn.execute(query)]


def reroute(moves: Sequence[tuple[str, str]], *, provider: str, via: AccountRef, actor: str,
            reason: str, now: dt.datetime | None = None) -> list[str]:
    """Move each (message id, new route JSON) from ``provider`` to the ``via`` account's
    provider, if it is still movable; one transaction, an audit row (``rerouted``) per
    message. Returns the ids moved. The message becomes due at once."""
    now = now or utcnow()
    moved: list[str] = []
    with db_errors(), get_engine().begin() as conn:
        for message_id, route in moves:
            row = conn.execute(
                update(MESSAGES).where(_m.id == message_id, *_movable(provider))
                .values(provider=via.provider, via_address=via.address, route=route,
                        next_attempt_at=None, updated_at=now)
                .returning(_m.state)).first()
            if row is None:
                continue
            _audit(conn, message_id, actor, "rerouted", now=now, from_state=row.state,
                   to_state=row.state, reason=reason)
            moved.append(message_id)
    return moved
