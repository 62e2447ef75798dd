"""One delivery attempt: claim, (verify,) send, record. Knows nothing of Celery.

The sequence that makes the effect exactly once:
1. claim: a conditional UPDATE gives this worker a lease and opens an attempt row;
2. if the previous attempt may have reached the provider, ask the provider first;
3. call the provider with no database transaction open;
4. finish: a conditional UPDATE on (state, lease owner) records the outcome.

Between 1 and 2 the mailbox's token bucket (ratelimit.py) may hold the send back: then
the claim is released (outbox.release) with no attempt counted, due at the bucket's turn.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import redis

from mailrelay import limits, providers, ratelimit
from mailrelay.auth import credentials
from mailrelay.auth.credentials import Credentials
from mailrelay.auth.crypto import SecretUnreadable
from mailrelay.auth.tokens import manager as token_manager
from mailrelay.config import get_settings
from mailrelay.errors import MailrelayError, ProviderError, TransientInfraError, ValidationError
from mailrelay.logctx import get_logger
from mailrelay.message import validate
from mailrelay.metrics import DELIVERIES, DELIVERY_SECONDS, LEASES_LOST, RATE_LIMITED
from mailrelay.providers.base import Outbound, ProviderAdapter
from mailrelay.retry import RetryLimits, decide
from mailrelay.store import outbox
from mailrelay.store.accounts import AccountNotFound
from mailrelay.store.outbox import Claim, Outcome
from mailrelay.store.states import State

log = get_logger(__name__)

# A send starts only with at least the provider timeout plus this much lease left.
LEASE_MARGIN_SECONDS = 5


@dataclass(frozen=True)
class Report:
    """What the task needs to know afterwards: the outcome, and whether to come back."""

    message_id: str
    state: str | None
    provider: str | None = None
    retry_in: float | None = None


def deliver(message_id: str, *, worker: str) -> Report:
    settings = get_settings()
    claim = outbox.claim(message_id, worker=worker, lease_seconds=settings.lease_seconds)
    if claim is None:
        return _not_claimed(message_id)
    started = time.perf_counter()
    outcome = _attempt(claim)
    if isinstance(outcome, Limited):
        return _held_back(claim, outcome.wait)
    latency = time.perf_counter() - started
    DELIVERY_SECONDS.labels(provider=claim.provider).observe(latency)
    DELIVERIES.labels(provider=claim.provider, result=outcome.state.value,
                      code=outcome.code or "").inc()
    held = outbox.finish(claim, outcome, latency_ms=round(latency * 1000))
    if not held:
        LEASES_LOST.labels(provider=claim.provider).inc()
        log.warning("lease lost before the attempt finished; the new owner decides")
        return Report(message_id, None, claim.provider)
    retry_in = _countdown(outcome.next_attempt_at) if outcome.state is State.RETRYING else None
    return Report(message_id, outcome.state.value, claim.provider, retry_in)


def _countdown(at: dt.datetime | None) -> float | None:
    """Seconds until ``at`` if a Celery countdown may wait that long, else None. Longer
    waits stay parked in next_attempt_at for the reconciler: a countdown beyond the
    broker's visibility timeout would run twice."""
    if at is None:
        return None
    wait = (at - outbox.utcnow()).total_seconds()
    return max(wait, 0.0) if wait <= get_settings().countdown_max else None


@dataclass(frozen=True)
class Limited:
    """The mailbox's rate limit held the send back: nothing left; try again in ``wait`` s."""

    wait: float


def _held_back(claim: Claim, wait: float) -> Report:
    """Give the message back without counting an attempt, due at the bucket's turn for it."""
    RATE_LIMITED.labels(provider=claim.provider).inc()
    until = outbox.utcnow() + dt.timedelta(seconds=wait)
    if not outbox.release(claim, until=until, reason=f"mailbox rate limit: next turn in {wait:.1f}s"):
        LEASES_LOST.labels(provider=claim.provider).inc()
        log.warning("lease lost before a rate-limited send was given back; the new owner decides")
        return Report(claim.message_id, None, claim.provider)
    log.info("rate limited; next turn in %.1fs", wait)
    return Report(claim.message_id, State.RETRYING.value, claim.provider, _countdown(until))


def _attempt(claim: Claim) -> Outcome | Limited:
    # True while an earlier attempt may have reached the provider and nobody has asked it
    # yet: every outcome short of that answer keeps the flag, so no later attempt resends
    # blindly.
    unsettled = claim.verify
    note = None
    try:
        adapter = providers.get(claim.provider)
        out = _outbound(claim)
        account = _account(adapter, claim)
        tokens = (token_manager().source(account, adapter.refresh)
                  if adapter.uses_oauth and account else None)
        wait = _rate_wait(adapter, claim, account)
        if wait:
            return Limited(wait)
        with _slot(adapter, account):
            if unsettled:
                if adapter.capabilities.can_verify:
                    found = adapter.find_sent(out, tokens)
                    if found is not None:
                        return Outcome(State.SENT, provider_message_id=found,
                                       note="the provider already had this Message-ID; not sent again")
                else:
                    note = "the provider cannot say whether the earlier attempt was sent; sent again"
                unsettled = False
            _check_lease(claim)
            result = adapter.send(out, tokens)
        return Outcome(State.SENT, provider_message_id=result.provider_message_id, note=note)
    except ValidationError as err:
        # The stored payload no longer validates (a corrupt row): sending it is impossible.
        return Outcome(State.FAILED, code=err.code, detail=f"stored payload: {err}", verify=unsettled)
    except MailrelayError as err:
        return _after_error(err, claim, unsettled)
    except redis.RedisError as err:  # mailrelay's own Redis, before anything was sent
        return _after_error(TransientInfraError("redis_unavailable", type(err).__name__), claim,
                            unsettled)
    except Exception as err:  # an adapter bug: the request may have left, so verify next time
        log.exception("unexpected error in provider %s", claim.provider)
        wrapped = ProviderError("internal_error", type(err).__name__, provider=claim.provider,
                                sent_unknown=True)
        return _after_error(wrapped, claim, unsettled)


def _check_lease(claim: Claim) -> None:
    """Refuse to start a send that could outlive the lease: another worker may then take
    the message over, ask the provider before this send lands, and send it again."""
    left = (claim.lease_expires_at - outbox.utcnow()).total_seconds()
    if left < get_settings().provider_timeout + LEASE_MARGIN_SECONDS:
        raise ProviderError("internal_error", f"only {left:.0f}s of the lease left; not sent",
                            provider=claim.provider)


def _account(adapter: ProviderAdapter, claim: Claim) -> Credentials | None:
    """The sending account, looked up once, for the adapters that act on it (OAuth tokens,
    per-mailbox limits); refused at once when it cannot send."""
    if not (adapter.uses_oauth or adapter.capabilities.max_concurrent_per_mailbox):
        return None
    return credentials.sendable(claim.account_address, claim.provider)


def _rate_wait(adapter: ProviderAdapter, claim: Claim, account: Credentials | None) -> float:
    """0.0 when the mailbox's token bucket let this send through (or no rate applies),
    else the seconds until its turn (at most MAILRELAY_COUNTDOWN_MAX, so that the wait
    is a countdown). Raises redis.RedisError like the other Redis limits."""
    if account is None:
        account = _rate_account(claim.account_address)
    if account is None:
        return 0.0
    # The account's override, else the provider's documented per-mailbox rate.
    per_minute = account.rate_limit_per_minute or adapter.capabilities.sends_per_minute
    if per_minute is None:
        return 0.0
    return ratelimit.take(account.id, per_minute, max_wait=get_settings().countdown_max)


def _rate_account(address: str) -> Credentials | None:
    """The account of an adapter that delivery looks none up for (sink, smtp): it may
    still carry a rate override. Read from the same 30 s cache, so no database round trip
    per send. One that cannot be read sets no rate; what else that breaks is the adapter's
    to report, as before (only OAuth adapters, looked up by ``_account``, have a default
    rate)."""
    try:
        return credentials.cached(address)
    except (AccountNotFound, SecretUnreadable):
        return None


def _slot(adapter: ProviderAdapter, account: Credentials | None) -> AbstractContextManager[None]:
    """The provider's per-mailbox concurrency limit, across every worker (if it has one)."""
    limit = adapter.capabilities.max_concurrent_per_mailbox
    if not limit or account is None:
        return nullcontext()
    return limits.mailbox_slot(account.id, limit, provider=adapter.name)


def _after_error(err: MailrelayError, claim: Claim, unsettled: bool) -> Outcome:
    limits = RetryLimits.from_settings(get_settings())
    # A replayed message has a fresh budget: attempts and age count from the last replay.
    ended = outbox.utcnow()
    outcome = decide(err, attempt=claim.budget_attempt, created_at=claim.window_start,
                     now=ended, limits=limits)
    outcome = dataclasses.replace(outcome, ended_at=ended)
    # An attempt that may have reached the provider marks the message to be asked about
    # first, whatever the outcome: also when it fails (budget spent, window closed,
    # permanent code), so that a replay never resends it blindly.
    maybe_sent = isinstance(err, ProviderError) and err.sent_unknown
    if (unsettled or maybe_sent) and not outcome.verify:
        outcome = dataclasses.replace(outcome, verify=True)
    log.info("attempt %d ended %s (%s)", claim.attempt_number, outcome.state.value, err.code)
    return outcome


def _outbound(claim: Claim) -> Outbound:
    try:
        raw = json.loads(claim.payload)
    except (TypeError, ValueError) as err:
        raise ValidationError("invalid_message", "the stored payload is not JSON") from err
    # Re-validation is the parser of the stored form; no size check (done at intake).
    message = validate(raw, max_message_bytes=None, max_recipients=2**31)
    return Outbound(message=message, message_id=claim.message_id,
                    rfc822_message_id=claim.rfc822_message_id, date=claim.created_at,
                    attempt_number=claim.attempt_number, account=claim.via_address)


def _not_claimed(message_id: str) -> Report:
    """Nothing to send now: say why, and whether a near retry is due (clock skew, twins)."""
    found = outbox.brief(message_id)
    if found is None:
        log.warning("no message with this id; task dropped")
        return Report(message_id, None)
    retry_in = _countdown(found.next_attempt_at) if found.state == State.RETRYING else None
    # A retry already due is not re-sent from here: the task that claimed it is running.
    return Report(message_id, found.state, found.provider, retry_in=retry_in or None)
