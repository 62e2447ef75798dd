"""The rollout gate: where intake sends a message of a provider under rollout.

A message from an account of the rollout's provider is **admitted** when the sender's
bucket is under the rollout's percentage and, if internal domains are set, every
recipient is in one of them. Otherwise it goes through the **fallback** account (its
From unchanged), or, with no usable fallback, it is refused with ``rollout_gated``
(**gated**). In ``dry_run`` mode everyone is admitted and the route records what enforce
would have decided. No rollout row: admitted, and nothing is recorded (as before
rollouts existed).

The rows are read once per process every CACHE_SECONDS (one query for all of them, the
fallback accounts joined), so the gate adds no database round trip to intake; a change
reaches every intake process within that time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mailrelay import providers
from mailrelay.errors import ValidationError
from mailrelay.metrics import ROLLOUT_GATE, ROLLOUT_PERCENT
from mailrelay.rollout.bucket import bucket
from mailrelay.store import rollouts
from mailrelay.store.outbox import AccountRef
from mailrelay.store.rollouts import RolloutRow

CACHE_SECONDS = 10.0
ADMITTED, FALLBACK, GATED = "admitted", "fallback", "gated"


@dataclass(frozen=True)
class Route:
    """Where one message goes: the provider that sends it, through which account."""

    provider: str
    via: AccountRef | None = None
    # What goes on the message as ``route`` (None: no rollout applied).
    info: dict[str, Any] | None = None
    # The refusal, for a message the gate does not let through.
    refused: ValidationError | None = None

    @property
    def decision(self) -> str:
        return str(self.info["decision"]) if self.info else ADMITTED

    def as_json(self) -> str | None:
        return json.dumps(self.info, sort_keys=True) if self.info else None


def _pct(bp: int) -> str:
    return f"{bp / 100:g}%"


def fallback_problem(row: RolloutRow) -> str | None:
    """Why the rollout's fallback cannot take messages, or None when it can. (No address
    in it: it becomes a rejected message's error detail.)"""
    if row.fallback is None:
        return "no fallback"
    account = row.fallback_account
    if account is None:
        return "the fallback account is not registered (any more)"
    if account.state == "disabled":
        return "the fallback account is disabled"
    if account.provider == row.provider or account.provider not in providers.names():
        return f"the fallback account sends through {account.provider}"
    return None


def decide_route(row: RolloutRow | None, sender: str, provider: str,
                 recipient_domains: Iterable[str] | None) -> Route:
    """The route for a message from ``sender`` (an account of ``provider``) to recipients
    in ``recipient_domains`` (None: not known, not checked). Pure: no I/O, no metrics."""
    if row is None:
        return Route(provider)
    assigned = bucket(row.salt, sender)
    in_bucket = assigned < row.percent_bp
    internal: bool | None = None
    if row.internal_domains and recipient_domains is not None:
        internal = all(domain.lower() in row.internal_domains for domain in recipient_domains)
    info: dict[str, Any] = {
        "rollout": row.provider, "mode": row.mode, "state": row.state, "bucket": assigned,
        "percent": row.percent_bp / 100, "internal_domains": list(row.internal_domains),
        "recipients_internal": internal, "fallback": row.fallback,
    }
    reasons = [f"bucket {assigned} is {'' if in_bucket else 'not '}under {_pct(row.percent_bp)} "
               f"({row.percent_bp})"]
    if internal is False:
        reasons.append(f"a recipient is outside the internal domains ({', '.join(row.internal_domains)})")
    elif internal and in_bucket:
        reasons.append("every recipient is in the internal domains")
    elif row.internal_domains and recipient_domains is None:
        reasons.append("recipients not checked against the internal domains")
    problem = fallback_problem(row)
    if in_bucket and internal is not False:
        decision = ADMITTED
    elif problem is None:
        decision = FALLBACK
        reasons.append(f"sent through the fallback {row.fallback}")
    else:
        decision = GATED
        reasons.append(problem)
    reason = "; ".join(reasons)
    if row.mode == "dry_run":
        info.update(decision=ADMITTED, would=decision,
                    reason=f"dry run, admitted; enforce would decide {decision}: {reason}")
        return Route(provider, info=info)
    info.update(decision=decision, reason=reason)
    if decision == ADMITTED:
        return Route(provider, info=info)
    if decision == FALLBACK:
        via = row.fallback_account
        assert via is not None  # fallback_problem checked it
        return Route(via.provider, via=via, info=info)
    refusal = ValidationError("rollout_gated", f"the {row.provider} rollout at "
                              f"{_pct(row.percent_bp)} does not admit this message: {reason}")
    return Route(provider, info=info, refused=refusal)


# --- the process's cache ------------------------------------------------------------

_lock = threading.Lock()
_cached: tuple[float, dict[str, RolloutRow]] | None = None


def current_rows(max_age: float = CACHE_SECONDS) -> dict[str, RolloutRow]:
    """Every rollout by provider, at most ``max_age`` seconds old."""
    global _cached
    now = time.monotonic()
    found = _cached
    if found is not None and now - found[0] < max_age:
        return found[1]
    with _lock:
        found = _cached
        if found is not None and time.monotonic() - found[0] < max_age:
            return found[1]
        rows = {row.provider: row for row in rollouts.all_rollouts()}
        for row in rows.values():
            ROLLOUT_PERCENT.labels(provider=row.provider).set(row.percent_bp / 100)
        _cached = (time.monotonic(), rows)
        return rows


def forget() -> None:
    """Drop the cache (tests; a command that has just changed a rollout)."""
    global _cached
    _cached = None


def route(account: AccountRef, provider: str, recipient_domains: Iterable[str]) -> Route:
    """Intake's route for a message from ``account`` (sending through ``provider``)."""
    rows = current_rows()
    if not rows:
        return Route(provider)
    row = rows.get(provider)
    chosen = decide_route(row, account.address, provider, list(recipient_domains))
    if row is not None:
        ROLLOUT_GATE.labels(provider=row.provider, result=chosen.decision).inc()
    return chosen
