"""After a rollback: waiting messages that never reached the provider go to the fallback.

A message of the rolled-back provider moves when it is ``queued`` or ``retrying``, was
sent by its own account (not already through someone's fallback), and no attempt of it
may have reached the provider (``maybe_sent`` is set for good by any attempt whose
outcome was unknown; no attempt is open). A message that may have reached the provider
never changes provider: only that provider can answer whether it already sent it. It
stays, with its retry policy; so does everything when the rollout has no fallback, and a
message that does not fit the fallback provider's limits.

A moved message keeps its Message-ID, retry budget and window; it becomes due at once
and is put on the fallback's queue (if that publish fails, the reconciler finds it). A
task still on the old queue is harmless: the claim reads the provider from the row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from mailrelay.errors import ValidationError
from mailrelay.logctx import get_logger
from mailrelay.message import validate
from mailrelay.providers import fit
from mailrelay.rollout.gate import fallback_problem
from mailrelay.store import rollouts
from mailrelay.store.outbox import AccountRef, utcnow
from mailrelay.store.rollouts import RolloutRow, Waiting

log = get_logger(__name__)

BATCH = 1000

Enqueue = Callable[[str, str], None]


@dataclass(frozen=True)
class Rerouted:
    moved: int = 0
    # Waiting messages that do not fit the fallback provider (they stay).
    unfit: int = 0
    not_enqueued: int = 0


def to_fallback(row: RolloutRow, *, actor: str, enqueue: Enqueue | None,
                limit: int = BATCH) -> Rerouted:
    """Move what may move from ``row.provider`` to its fallback; see the module doc."""
    chosen = _choose(row, limit)
    if chosen is None:
        return Rerouted()
    via, fitting, unfit = chosen
    now = utcnow()
    reason = (f"the {row.provider} rollout was rolled back; no attempt reached {row.provider}, "
              f"so it is sent through the fallback {via.address} ({via.provider})")
    moves = []
    for waiting in fitting:
        before = json.loads(waiting.route) if waiting.route else {}
        route = {**before, "decision": "rerouted", "reason": reason, "fallback": via.address,
                 "rerouted_at": now.isoformat(), "decision_before": before.get("decision")}
        moves.append((waiting.id, json.dumps(route, sort_keys=True)))
    moved = rollouts.reroute(moves, provider=row.provider, via=via, actor=actor, reason=reason,
                             now=now) if moves else []
    not_enqueued = 0
    for index, message_id in enumerate(moved):
        if enqueue is None:
            not_enqueued = len(moved)
            break
        try:
            enqueue(message_id, via.provider)
        except Exception as err:  # any publish failure: the reconciler re-enqueues them
            not_enqueued = len(moved) - index
            log.warning("could not enqueue rerouted messages (%s); the reconciler will",
                        type(err).__name__)
            break
    if moved or unfit:
        log.warning("rerouted %d waiting %s messages to the fallback; %d do not fit it",
                    len(moved), row.provider, unfit)
    return Rerouted(len(moved), unfit, not_enqueued)


def plan(row: RolloutRow, *, limit: int = BATCH) -> Rerouted:
    """What ``to_fallback`` would move now (up to ``limit``) and what does not fit; it
    reads the same messages and writes, enqueues nothing (``rollout rollback --dry-run``)."""
    chosen = _choose(row, limit)
    if chosen is None:
        return Rerouted()
    _via, fitting, unfit = chosen
    return Rerouted(len(fitting), unfit)


def _choose(row: RolloutRow, limit: int) -> tuple[AccountRef, list[Waiting], int] | None:
    """The fallback, the waiting messages that would move to it (oldest first) and how
    many do not fit it; None when nothing can move (no usable fallback)."""
    if fallback_problem(row) is not None:
        return None
    via = row.fallback_account
    assert via is not None
    fitting, unfit = [], 0
    for waiting in rollouts.movable(row.provider, limit=limit):
        if _fits(waiting.payload, via.provider):
            fitting.append(waiting)
        else:
            unfit += 1
    return via, fitting, unfit


def _fits(payload: str | None, provider: str) -> bool:
    try:
        message = validate(json.loads(payload or ""), max_message_bytes=None,
                           max_recipients=2**31)
        fit.check(message, provider)
    except (ValueError, ValidationError):
        return False
    return True
