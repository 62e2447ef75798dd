"""One delivery attempt: claim, (verify,) send, record. Knows nothing of Celery.

The sequence that makes the effect exactly once:
1. claim: a conditional UPDATE gives this worker a lease (on the database's clock) and
   opens an attempt row;
2. settle what the message's row already knows: a provider id recorded by an attempt
   that sent after losing its lease (sent: never again), or too many takeovers from
   workers that died mid-attempt (failed, ``worker_lost``);
3. if the previous attempt may have reached the provider, ask the provider first, once
   its lookups had time to settle (MAILRELAY_VERIFY_SETTLE_SECONDS after that attempt),
   and believe "not there" only when a second lookup says it too;
4. call the provider with no database transaction open, the lease renewed in the
   background and checked before every request (leases.py);
5. finish: a conditional UPDATE on (state, lease owner) records the outcome.

Between 1 and 3 the mailbox's token bucket (ratelimit.py) may hold the send back, and so
may a settle time not yet passed: then the claim is released (outbox.release) with no
attempt counted, due at the bucket's turn or when the lookups have settled.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import redis

from mailrelay import leases, limits, providers, ratelimit
from mailrelay.auth import credentials
from mailrelay.auth.accounts import AccountNotFound
from mailrelay.auth.credentials import Credentials
from mailrelay.auth.crypto import SecretUnreadable
from mailrelay.auth.tokens import manager as token_manager
from mailrelay.config import get_settings
from mailrelay.errors import MailrelayError, ProviderError, TransientInfraError, ValidationError
from mailrelay.leases import Lease, LeaseLost
from mailrelay.logctx import get_logger
from mailrelay.message import validate
from mailrelay.metrics import (
    DELIVERIES,
    DELIVERY_SECONDS,
    LEASES_LOST,
    RATE_LIMIT_WAIT,
    RATE_LIMITED,
)
from mailrelay.providers.base import Outbound, ProviderAdapter, TokenSource, guarded
from mailrelay.retry import RetryLimits, decide
from mailrelay.store import outbox
from mailrelay.store.notifications import Pending
from mailrelay.store.outbox import Claim, Outcome
from mailrelay.store.states import State

log = get_logger(__name__)

WORKER_LOST = "worker_lost"
# A task that found its retry not yet due (by the database's clock) comes back no sooner.
EARLY_RETRY_SECONDS = 0.2


@dataclass(frozen=True)
class Report:
    """What the task needs to know afterwards: the outcome, and whether to come back."""

    message_id: str
    state: str | None
    provider: str | None = None
    retry_in: float | None = None
    # The outcome notification the finish wrote: the task publishes it.
    notification: Pending | None = None


def deliver(message_id: str, *, worker: str) -> Report:
    settings = get_settings()
    claim = outbox.claim(message_id, worker=worker, lease_seconds=settings.lease_seconds)
    if claim is None:
        return _not_claimed(message_id)
    started = time.perf_counter()
    known = _already_settled(claim)
    if known is None:
        settle = _settle_wait(claim)
        if settle > 0:
            return _held_back(claim, settle, settling=True)
        lease = Lease(claim, settings.lease_seconds)
        # After an attempt of unknown outcome, the request that sends re-reads the row:
        # that attempt may have recorded its send meanwhile.
        lease.recheck_before_send = claim.verify
        with leases.kept(lease), guarded(lease):
            outcome = _attempt(claim)
        if isinstance(outcome, Limited):
            return _held_back(claim, outcome.wait)
    else:
        outcome = known
    latency = time.perf_counter() - started
    DELIVERY_SECONDS.labels(provider=claim.provider, result=outcome.state.value).observe(latency)
    DELIVERIES.labels(provider=claim.provider, result=outcome.state.value,
                      code=outcome.code or "").inc()
    held = outbox.finish(claim, outcome, latency_ms=round(latency * 1000))
    if not held:
        LEASES_LOST.labels(provider=claim.provider).inc()
        log.warning("lease lost before the attempt finished; the new owner decides")
        return Report(message_id, None, claim.provider)
    retry_in = _countdown(outcome.next_attempt_at) if outcome.state is State.RETRYING else None
    return Report(message_id, outcome.state.value, claim.provider, retry_in, held.notification)


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


def _held_back(claim: Claim, wait: float, *, settling: bool = False) -> Report:
    """Give the message back without counting an attempt, due in ``wait`` seconds: at the
    bucket's turn for it, or once the provider's lookups have settled."""
    if settling:
        released = outbox.release(
            claim, wait=wait, code=None, action="settle",
            reason=f"the provider's lookups settle after an attempt of unknown outcome; "
                   f"asking in {wait:.1f}s")
    else:
        RATE_LIMITED.labels(provider=claim.provider).inc()
        RATE_LIMIT_WAIT.labels(provider=claim.provider).observe(wait)
        released = outbox.release(claim, wait=wait,
                                  reason=f"mailbox rate limit: next turn in {wait:.1f}s")
    if not released:
        LEASES_LOST.labels(provider=claim.provider).inc()
        log.warning("lease lost before a held-back send was given back; the new owner decides")
        return Report(claim.message_id, None, claim.provider)
    log.info("%s; next turn in %.1fs", "settling" if settling else "rate limited", wait)
    countdown = wait if wait <= get_settings().countdown_max else None
    return Report(claim.message_id, State.RETRYING.value, claim.provider, countdown)


def _already_settled(claim: Claim) -> Outcome | None:
    """What the row alone decides, before anything is asked of the provider."""
    if claim.recorded_provider_id:
        return Outcome(State.SENT, provider_message_id=claim.recorded_provider_id,
                       note="an earlier attempt sent it after losing its lease; not sent again")
    if not claim.took_over:
        return None
    settings = get_settings()
    now = claim.db_now or outbox.utcnow()
    window_closed = now - claim.window_start > dt.timedelta(seconds=settings.retry_max_age)
    if claim.takeovers > settings.max_takeovers or window_closed:
        why = (f"taken over {claim.takeovers} times from workers that died or hung mid-attempt"
               if not window_closed else "its worker was lost after the retry window closed")
        # The last attempt's outcome is unknown: a replay asks the provider first.
        return Outcome(State.FAILED, code=WORKER_LOST, detail=why, verify=True)
    return None


def _settle_wait(claim: Claim) -> float:
    """Seconds until the provider's lookups can be trusted about the last attempt of
    unknown outcome (0: now, or nothing to ask)."""
    if not claim.verify or claim.verify_since is None:
        return 0.0
    settled = claim.verify_since + dt.timedelta(seconds=get_settings().verify_settle_seconds)
    return max(0.0, (settled - (claim.db_now or outbox.utcnow())).total_seconds())


class ProviderClock:
    """Milliseconds spent inside the provider's requests, over every block it times
    (an exception out of the block counts its time too)."""

    def __init__(self) -> None:
        self.ms: float | None = None
        self._since = 0.0

    def __enter__(self) -> None:
        self._since = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        self.ms = (self.ms or 0.0) + (time.perf_counter() - self._since) * 1000


def _attempt(claim: Claim) -> Outcome | Limited:
    clock = ProviderClock()
    result = _attempt_timed(claim, clock)
    if isinstance(result, Outcome) and clock.ms is not None:
        result = dataclasses.replace(result, provider_ms=round(clock.ms, 3))
    return result


def _attempt_timed(claim: Claim, clock: ProviderClock) -> Outcome | Limited:
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
        if tokens is not None:
            # Any wait for another worker's refresh happens now, before the lease is
            # checked again for the first request.
            tokens.get()
        wait = _rate_wait(adapter, claim, account)
        if wait:
            return Limited(wait)
        with _slot(adapter, account), clock:
            if unsettled:
                if adapter.capabilities.can_verify:
                    found = _find_sent(adapter, out, tokens)
                    if found is not None:
                        return Outcome(State.SENT, provider_message_id=found,
                                       note="the provider already had this Message-ID; not sent again")
                else:
                    note = "the provider cannot say whether the earlier attempt was sent; sent again"
                unsettled = False
            result = adapter.send(out, tokens)
        return Outcome(State.SENT, provider_message_id=result.provider_message_id, note=note)
    except LeaseLost as err:
        if err.recorded_provider_id:
            return Outcome(State.SENT, provider_message_id=err.recorded_provider_id,
                           note="an earlier attempt sent it after losing its lease; not sent again")
        # Nothing left for this worker to record: the new owner decides.
        return Outcome(State.RETRYING, code="internal_error", detail=str(err.detail),
                       verify=unsettled, ended_at=outbox.utcnow())
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


def _find_sent(adapter: ProviderAdapter, out: Outbound, tokens: TokenSource | None) -> str | None:
    """The provider's id of an earlier send of this Message-ID, or None only when two
    lookups MAILRELAY_VERIFY_RECHECK_SECONDS apart both say so: a search index or a Sent
    Items copy that lags may miss a message sent moments ago once, rarely twice."""
    found = adapter.find_sent(out, tokens)
    if found is None:
        time.sleep(get_settings().verify_recheck_seconds)  # the lease is kept meanwhile
        found = adapter.find_sent(out, tokens)
    return found


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
    if found.state != State.RETRYING:
        # Claimed by another task (a twin, a takeover) or finished: nothing to do here.
        return Report(message_id, found.state, found.provider)
    # Still waiting: this task came early, by a worker clock ahead of the database's or by
    # a countdown that ran out the moment before its due time. Come back when it is due
    # (never drop it: the reconciler would only find it minutes later).
    due_in = found.due_in if found.due_in is not None else 0.0
    retry_in = max(due_in, EARLY_RETRY_SECONDS) if due_in <= get_settings().countdown_max else None
    return Report(message_id, found.state, found.provider, retry_in=retry_in)
