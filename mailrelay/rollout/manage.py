"""Operator changes to a rollout: set, pause, resume, rollback, remove.

Each is one conditional UPDATE on the version just read, with a decision row carrying
the operator's name and reason (``rollouts.change``); a change that races the controller
or another operator is refused (``Conflict``) rather than applied over it. The gate's
cache in this process is dropped after a change; other processes see it within 10 s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from mailrelay import providers
from mailrelay.addressing import parse_mailbox
from mailrelay.errors import ValidationError
from mailrelay.rollout import gate, reroute
from mailrelay.rollout.bucket import new_salt
from mailrelay.rollout.policy import DEFAULTS, FULL, Policy, SettingError, check, policy_of
from mailrelay.rollout.reroute import Enqueue, Rerouted
from mailrelay.store import rollouts
from mailrelay.store.outbox import find_account, utcnow
from mailrelay.store.rollouts import DecisionRecord, RolloutRow

# The settings `rollout set` may change, each a rollout column (ladder in basis points).
POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(Policy))


class NotFound(LookupError):
    """No rollout for that provider."""


class Conflict(RuntimeError):
    """The rollout changed between reading and writing it; nothing was written."""


class Refused(ValueError):
    """The change does not apply to the rollout as it stands (pause a paused one...)."""


@dataclass(frozen=True)
class Changes:
    """What `rollout set` was given; None: leave as is (or the default, for a new rollout)."""

    percent_bp: int | None = None
    mode: str | None = None
    internal_domains: tuple[str, ...] | None = None  # () clears
    fallback: str | None = None  # "" clears
    salt: str | None = None
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)


def _require(provider: str) -> RolloutRow:
    row = rollouts.get(provider)
    if row is None:
        raise NotFound(f"no rollout for {provider}")
    return row


def normalize_domains(domains: tuple[str, ...]) -> tuple[str, ...]:
    """Domains as addresses carry them (lower case, IDNA): what the gate compares."""
    found = []
    for domain in domains:
        try:
            found.append(parse_mailbox(f"x@{domain.strip()}", "internal_domains").domain)
        except ValidationError:
            raise SettingError(f"--internal-domains: {domain!r} is not a domain") from None
    return tuple(dict.fromkeys(found))


def _check_fallback(provider: str, address: str) -> str:
    account = find_account(address.strip().lower())
    if account is None:
        raise SettingError(f"--fallback {address}: no such account (add it with accounts add)")
    if account.provider == provider:
        raise SettingError(f"--fallback {address} sends through {provider} itself")
    if account.state == "disabled":
        raise SettingError(f"--fallback {address} is disabled")
    return account.address


def set_rollout(provider: str, changes: Changes, *, actor: str, reason: str,
                now: dt.datetime | None = None,
                preview: bool = False) -> tuple[RolloutRow, bool]:
    """Create the provider's rollout or change it; returns (the row, created). With
    ``preview`` every check runs and nothing is written: the row as it would be."""
    try:
        providers.queue_for(provider)
    except ValidationError as err:
        raise SettingError(err.detail) from None
    now = now or utcnow()
    row = rollouts.get(provider)
    values: dict[str, Any] = {}
    if changes.mode is not None:
        values["mode"] = changes.mode
    if changes.internal_domains is not None:
        values["internal_domains"] = normalize_domains(changes.internal_domains) or None
    if changes.fallback is not None:
        values["fallback"] = _check_fallback(provider, changes.fallback) if changes.fallback else None
    if changes.salt is not None:
        values["salt"] = changes.salt
    values.update(changes.policy)
    current = policy_of(row) if row else DEFAULTS
    merged = dataclasses.replace(current, **changes.policy)
    check(merged)
    if changes.percent_bp is not None:
        values["percent_bp"] = changes.percent_bp
    if row is None:
        return _create(provider, values, merged, actor=actor, reason=reason, now=now,
                       preview=preview), True
    if not values:
        raise Refused("nothing to change: give at least one option")
    if "percent_bp" in values and row.state == "aborted":
        # An aborted rollout is at 0% until someone resumes it, on purpose.
        raise Refused(f"the {provider} rollout is aborted: `rollout resume {provider} --percent N` "
                      "moves it again")
    moved = "percent_bp" in values or "salt" in values
    if moved:  # a new step for the controller: its dwell and counts start again
        values.update(step_started_at=now, successes=0, failures=0)
        if row.state == "complete" and values.get("percent_bp", row.percent_bp) < FULL:
            values["state"] = "running"
    after = values.get("percent_bp", row.percent_bp)
    record = DecisionRecord("set", reason, actor, inputs=_shown(values),
                            percent_before=row.percent_bp, percent_after=after,
                            state_after=values.get("state", row.state))
    return _change(row, values, record, now=now, preview=preview), False


def _create(provider: str, values: dict[str, Any], policy: Policy, *, actor: str, reason: str,
            now: dt.datetime, preview: bool = False) -> RolloutRow:
    # A new rollout starts at the ladder's first step unless told otherwise.
    percent = values.get("percent_bp", policy.ladder[0])
    full = {"mode": "enforce", "internal_domains": None, "fallback": None, "salt": new_salt(),
            **{name: getattr(policy, name) for name in POLICY_FIELDS}, **values,
            "percent_bp": percent, "state": "running", "step_started_at": now,
            "successes": 0, "failures": 0, "query_errors": 0, "last_evaluated_at": None}
    if full["error_codes"] == DEFAULTS.error_codes:
        full["error_codes"] = None  # follow the documented list as it evolves
    if preview:
        return _would_be(None, {**full, "provider": provider, "version": 0, "created_at": now,
                                "updated_at": now})
    record = DecisionRecord("create", reason, actor, inputs=_shown(values), percent_before=None,
                            percent_after=percent, state_after="running")
    if not rollouts.create(provider, full, record, now=now):
        raise Conflict(f"a rollout for {provider} was created meanwhile; run the command again")
    gate.forget()
    return _require(provider)


def _shown(values: dict[str, Any]) -> dict[str, Any]:
    """What the decision row says the operator set."""
    shown = {k: v for k, v in values.items() if k not in ("step_started_at", "successes",
                                                          "failures")}
    for name in ("internal_domains", "error_codes", "ladder"):
        if isinstance(shown.get(name), tuple):
            shown[name] = list(shown[name])
    return shown


def _change(row: RolloutRow, values: dict[str, Any], record: DecisionRecord, *,
            now: dt.datetime, preview: bool = False) -> RolloutRow:
    """Apply ``values`` if nobody changed the rollout meanwhile; the row after. A preview
    writes nothing and returns the row as it would be."""
    if preview:
        return _would_be(row, values)
    if not rollouts.change(row.provider, row.version, values, record, now=now):
        raise Conflict(f"the {row.provider} rollout changed while this command ran (the "
                       "controller or another operator); look at `rollout status` and run it again")
    gate.forget()
    return _require(row.provider)


def _would_be(row: RolloutRow | None, values: dict[str, Any]) -> RolloutRow:
    """The rollout as ``values`` would leave it (``row`` None: a new one, ``values`` all
    its columns), read back as ``rollouts.get`` would: a preview shows what a real change
    would print."""
    values = dict(values)
    if "internal_domains" in values:
        values["internal_domains"] = tuple(values["internal_domains"] or ())
    if "error_codes" in values and values["error_codes"] is not None:
        values["error_codes"] = tuple(values["error_codes"])
    if "fallback" in values:
        values["fallback_account"] = find_account(values["fallback"]) if values["fallback"] else None
    known = {field.name for field in dataclasses.fields(RolloutRow)}
    values = {k: v for k, v in values.items() if k in known}
    return RolloutRow(**values) if row is None else dataclasses.replace(row, **values)


def pause(provider: str, *, actor: str, reason: str, preview: bool = False) -> RolloutRow:
    """Stop the controller from changing the rollout; the gate keeps its percentage."""
    row = _require(provider)
    if row.state != "running":
        raise Refused(f"the {provider} rollout is {row.state}, not running")
    return _change(row, {"state": "paused"}, DecisionRecord(
        "pause", reason, actor, percent_before=row.percent_bp, percent_after=row.percent_bp,
        state_after="paused"), now=utcnow(), preview=preview)


def resume(provider: str, *, actor: str, reason: str, percent_bp: int | None = None,
           preview: bool = False) -> RolloutRow:
    """Hand a paused or aborted rollout back to the controller. From ``aborted`` (0%) it
    starts again at the ladder's first step unless ``percent_bp`` says otherwise."""
    row = _require(provider)
    if row.state not in ("paused", "aborted"):
        raise Refused(f"the {provider} rollout is {row.state}; only a paused or aborted one resumes")
    now = utcnow()
    percent = percent_bp if percent_bp is not None else (
        row.ladder[0] if row.state == "aborted" else row.percent_bp)
    values = {"state": "running", "percent_bp": percent, "step_started_at": now,
              "successes": 0, "failures": 0, "query_errors": 0}
    return _change(row, values, DecisionRecord("resume", reason, actor,
                                               percent_before=row.percent_bp,
                                               percent_after=percent, state_after="running"),
                   now=now, preview=preview)


def rollback(provider: str, *, actor: str, reason: str, enqueue: Enqueue | None,
             preview: bool = False) -> tuple[RolloutRow, Rerouted]:
    """Everyone off the provider now: 0% and ``aborted``; waiting messages that never
    reached it move to the fallback. Again on an aborted rollout: only the move. A preview
    says what would move and writes nothing."""
    row = _require(provider)
    if row.state != "aborted" or row.percent_bp != 0:
        now = utcnow()
        row = _change(row, {"state": "aborted", "percent_bp": 0, "step_started_at": now,
                            "successes": 0, "failures": 0},
                      DecisionRecord("rollback", reason, actor, percent_before=row.percent_bp,
                                     percent_after=0, state_after="aborted"),
                      now=now, preview=preview)
    if preview:
        return row, reroute.plan(row)
    return row, reroute.to_fallback(row, actor=actor, enqueue=enqueue)


def remove(provider: str, *, actor: str, reason: str, preview: bool = False) -> RolloutRow:
    """Delete the rollout: every sender of the provider is admitted again. History stays."""
    row = _require(provider)
    if preview:
        return row
    record = DecisionRecord("remove", reason, actor, percent_before=row.percent_bp,
                            percent_after=None, state_after=None)
    if not rollouts.remove(provider, row.version, record):
        raise Conflict(f"the {provider} rollout changed while this command ran; run it again")
    gate.forget()
    return row
