"""Outbox operations: intake, claim, finish. Every state change goes through here.

Each transition is one conditional UPDATE (compare-and-set on the current state, and on
the lease owner where there is one) plus its audit row, in one transaction. The deliver
path costs two transactions: claim before the provider call and finish after it; no
transaction is open while the provider is called.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from mailrelay.config import get_settings
from mailrelay.errors import ValidationError
from mailrelay.message import Message, make_message_id
from mailrelay.store import notifications, pg_fastpath
from mailrelay.store.db import db_errors, get_autocommit_engine, get_engine
from mailrelay.store.db import db_now as database_now
from mailrelay.store.models import ACCOUNTS, ATTEMPTS, AUDIT, MESSAGES
from mailrelay.store.notifications import Pending
from mailrelay.store.states import FINAL, State, check

messages = MESSAGES
attempts = ATTEMPTS
audit = AUDIT
accounts = ACCOUNTS

# The portable path's hot statements, built once. SQLAlchemy then only finds their
# compiled form; building them per call cost more CPU than SQLite's own work (bind
# parameter names start with p_ because a column's name is reserved in SET clauses).
_m = messages.c
_CLAIM = (
    update(messages)
    .where(_m.id == bindparam("p_id"), or_(
        _m.state == State.QUEUED.value,
        and_(_m.state == State.RETRYING.value,
             or_(_m.next_attempt_at.is_(None), _m.next_attempt_at <= bindparam("p_now"))),
        and_(_m.state == State.SENDING.value, _m.lease_expires_at < bindparam("p_now")),
    ))
    .values(prev_state=_m.state, state=State.SENDING.value, lease_owner=bindparam("p_owner"),
            lease_expires_at=bindparam("p_expires"), attempt_count=_m.attempt_count + 1,
            updated_at=bindparam("p_now"),
            verify_before_send=case((_m.state == State.SENDING.value, True),
                                    else_=_m.verify_before_send),
            maybe_sent=case((_m.state == State.SENDING.value, True), else_=_m.maybe_sent),
            takeovers=_m.takeovers + case((_m.state == State.SENDING.value, 1), else_=0),
            verify_since=case((_m.state == State.SENDING.value, _m.lease_expires_at),
                              else_=_m.verify_since))
    .returning(_m.prev_state, _m.attempt_count, _m.provider, _m.from_address,
               _m.rfc822_message_id, _m.payload, _m.created_at, _m.verify_before_send,
               _m.retry_base, _m.retry_since, _m.takeovers, _m.verify_since,
               _m.provider_message_id, _m.via_address)
)
_CLOSE_EXPIRED = (
    update(attempts)
    .where(attempts.c.message_id == bindparam("p_id"), attempts.c.outcome.is_(None))
    .values(outcome="unknown", finished_at=bindparam("p_now"), error_code="internal_error",
            detail="lease expired before the attempt finished")
)
_FINISH = (
    update(messages)
    .where(_m.id == bindparam("p_id"), _m.state == State.SENDING.value,
           _m.lease_owner == bindparam("p_owner"))
    .values(prev_state=_m.state, state=bindparam("p_state"), updated_at=bindparam("p_now"),
            lease_owner=None, lease_expires_at=None, verify_before_send=bindparam("p_verify"),
            maybe_sent=_m.maybe_sent | bindparam("p_verify", type_=Boolean),
            error_code=bindparam("p_code"), error_detail=bindparam("p_detail"),
            next_attempt_at=bindparam("p_next"), verify_since=bindparam("p_verify_since"))
)
# A send that ended after its lease was lost still leaves the provider's id on the message.
_RECORD_LATE_SENT = (
    update(messages)
    .where(_m.id == bindparam("p_id"), _m.provider_message_id.is_(None))
    .values(provider_message_id=bindparam("p_provider_id"))
)
_FINISH_SENT = _FINISH.values(provider_message_id=bindparam("p_provider_id"),
                              sent_at=bindparam("p_now"))
# What an outcome notification needs of the message, in the finish's own statement (the
# same columns pg_fastpath.FINISH_SQL's ``moved`` returns).
_OUTCOME_COLUMNS = (_m.notify, _m.replays, _m.provider, _m.provider_message_id,
                    _m.rfc822_message_id, _m.attempt_count, _m.request_id)
_FINISH = _FINISH.returning(*_OUTCOME_COLUMNS)
_FINISH_SENT = _FINISH_SENT.returning(*_OUTCOME_COLUMNS)
_CLOSE_ATTEMPT = (
    update(attempts).where(attempts.c.id == bindparam("p_attempt"))
    .values(finished_at=bindparam("p_now"), outcome=bindparam("p_outcome"),
            error_code=bindparam("p_code"), detail=bindparam("p_attempt_detail"),
            latency_ms=bindparam("p_latency"), provider_ms=bindparam("p_provider_ms"))
)
# The account that sent: the fallback a rollout routed the message through, else the
# sender's own (an alias, so that it is not correlated with the accounts being updated).
_via = accounts.alias("via")
_OWNER = (select(func.coalesce(select(_via.c.id).where(_via.c.address == _m.via_address)
                               .scalar_subquery(), _m.account_id))
          .where(_m.id == bindparam("p_id")).scalar_subquery())
_HEALTH_SENT = (
    update(accounts)
    .where(accounts.c.id == _OWNER,
           or_(accounts.c.consecutive_failures != 0, accounts.c.last_success_at.is_(None),
               accounts.c.last_success_at < bindparam("p_stale")))
    .values(last_success_at=bindparam("p_now"), consecutive_failures=0)
)
_HEALTH_FAILED = (
    update(accounts).where(accounts.c.id == _OWNER)
    .values(consecutive_failures=accounts.c.consecutive_failures + 1,
            last_failure_at=bindparam("p_now"), last_error_code=bindparam("p_code"),
            last_error_detail=bindparam("p_detail"))
)
_INSERT_ATTEMPT = insert(attempts)
_INSERT_AUDIT = insert(audit)

RAW_PAYLOAD_LIMIT = 64 * 1024


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class AccountRef:
    id: int
    address: str
    provider: str
    state: str
    html_policy: str | None = None


@dataclass(frozen=True)
class IntakeResult:
    message_id: str
    state: str
    error_code: str | None
    created: bool
    # The provider that sends it (an earlier message's own, for a repeat).
    provider: str | None = None
    # A rejection's outcome notification, written with it: to publish after the commit.
    notification: Pending | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.message_id, "state": self.state, "error_code": self.error_code}


@dataclass(frozen=True)
class Claim:
    """A worker's right to send one message until ``lease_expires_at``."""

    message_id: str
    owner: str
    attempt_id: str
    attempt_number: int
    provider: str
    from_address: str
    rfc822_message_id: str
    payload: str
    created_at: dt.datetime
    lease_expires_at: dt.datetime
    # The previous attempt may have reached the provider: ask before sending again.
    verify: bool
    # The retry budget since the last replay (none: since intake): attempts before it do
    # not count, and the retry window opens at ``retry_since`` instead of ``created_at``.
    retry_base: int = 0
    retry_since: dt.datetime | None = None
    # The database's clock when the claim was made: leases and waits are measured on it.
    db_now: dt.datetime | None = None
    # This claim took the message over from an expired lease; how many times that happened.
    took_over: bool = False
    takeovers: int = 0
    # When the last attempt of unknown outcome can no longer have been in flight.
    verify_since: dt.datetime | None = None
    # The provider's id of a send recorded after its worker had lost the lease.
    recorded_provider_id: str | None = None

    @property
    def lease_seconds_left(self) -> float:
        """Lease left when the claim was made, on the database's clock."""
        return (self.lease_expires_at - (self.db_now or utcnow())).total_seconds()
    # The account that sends it when not the sender's own (a rollout's fallback).
    via_address: str | None = None

    @property
    def account_address(self) -> str:
        """The address of the account whose credentials send this message."""
        return self.via_address or self.from_address

    @property
    def budget_attempt(self) -> int:
        """This attempt's number within the current retry budget (1-based)."""
        return self.attempt_number - self.retry_base

    @property
    def window_start(self) -> dt.datetime:
        """When the current retry window opened: the last replay, else intake."""
        return self.retry_since or self.created_at


@dataclass(frozen=True)
class Outcome:
    state: State
    provider_message_id: str | None = None
    code: str | None = None
    detail: str | None = None
    next_attempt_at: dt.datetime | None = None
    verify: bool = False
    note: str | None = None
    # When the attempt ended, if known: the attempt row's finished_at, and the moment a
    # retry wait was counted from, are then the same instant.
    ended_at: dt.datetime | None = None
    # The retry's wait as the worker measured it (``next_attempt_at - ended_at``): on
    # PostgreSQL the database's clock places it, so every host agrees when it is due.
    # None: ``next_attempt_at`` is a deadline of its own (a parked message's window).
    wait: float | None = None
    # Milliseconds spent in the provider's requests (verification included), if any were
    # made: the rest of the attempt's time is what mailrelay itself added.
    provider_ms: float | None = None


def _audit(conn: Connection, message_id: str | None, actor: str, action: str, *, now: dt.datetime,
           from_state: str | None = None, to_state: str | None = None, code: str | None = None,
           reason: str | None = None) -> None:
    conn.execute(_INSERT_AUDIT, {"message_id": message_id, "at": now, "actor": actor[:200],
                                 "action": action, "from_state": from_state, "to_state": to_state,
                                 "code": code, "reason": reason})


# --- accounts ---------------------------------------------------------------------------

def find_account(address: str) -> AccountRef | None:
    if get_engine().dialect.name == "postgresql":
        found = pg_fastpath.run(pg_fastpath.ACCOUNT, {"address": address.lower()})
        return AccountRef(*found) if found else None
    with db_errors(), get_engine().connect() as conn:
        row = conn.execute(
            select(accounts.c.id, accounts.c.address, accounts.c.provider, accounts.c.state,
                   accounts.c.html_policy)
            .where(accounts.c.address == address.lower())
        ).first()
    return AccountRef(*row) if row else None


# --- intake -----------------------------------------------------------------------------

def _existing(conn: Connection, where: Any) -> IntakeResult | None:
    row = conn.execute(select(messages.c.id, messages.c.state, messages.c.error_code,
                              messages.c.provider).where(where)).first()
    return IntakeResult(row.id, row.state, row.error_code, created=False,
                        provider=row.provider) if row else None


def earlier_request(request_id: str) -> IntakeResult | None:
    """The message an intake request already stored, if it was delivered to intake before."""
    with db_errors(), get_engine().connect() as conn:
        return _existing(conn, messages.c.request_id == request_id)


def _raw_payload(raw: object) -> str | None:
    try:
        text = json.dumps(raw, sort_keys=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        return None
    return text if len(text) <= RAW_PAYLOAD_LIMIT else None


def accept(message: Message, account: AccountRef, *, request_id: str | None, actor: str,
           size_bytes: int, content_hash: str | None = None,
           html_removed: int | None = None, provider: str | None = None,
           via: AccountRef | None = None, route: str | None = None,
           refuse: ValidationError | None = None, notify: str | None = None) -> IntakeResult:
    """Persist an accepted message as `queued`, or return the earlier one it repeats.

    ``content_hash`` identifies the producer's content for idempotency (default: the hash
    of ``message``; intake passes the hash from before its content policy changed it).
    Raises ValidationError(idempotency_conflict) when the key names other content; the
    caller stores that as a rejection.

    A rollout decides the rest: ``provider`` (default: the account's), ``via`` (the
    fallback account that sends it, if any), ``route`` (the gate's decision as JSON) and
    ``refuse`` (the gate's refusal, raised only if this is not a repeat of an earlier
    message: a repeat is the earlier message, whatever the gate says now).
    """
    now = utcnow()
    message_id = str(uuid.uuid4())
    content_hash = content_hash or message.content_hash()
    values = {
        "id": message_id, "request_id": request_id, "account_id": account.id,
        "from_address": message.sender.address.lower(), "provider": provider or account.provider,
        "state": State.QUEUED.value, "idempotency_key": message.idempotency_key,
        "content_hash": content_hash,
        "rfc822_message_id": make_message_id(uuid.UUID(message_id).hex, message.sender.domain),
        "payload": json.dumps(message.to_payload(), separators=(",", ":")),
        "size_bytes": size_bytes, "recipient_count": len(message.recipients),
        "attempt_count": 0, "verify_before_send": False, "created_at": now, "updated_at": now,
        "html_removed": html_removed, "route": route,
        "via_address": via.address if via else None, "notify": notify,
    }
    for _ in range(2):  # a concurrent twin may win the insert; the second pass finds it
        try:
            if get_engine().dialect.name == "postgresql":
                return _accept_pg(values, actor=actor[:200], refuse=refuse,
                                  content_hash=content_hash)
            with db_errors(), get_engine().begin() as conn:
                earlier = _find_earlier(conn, request_id, account.id, message.idempotency_key,
                                        content_hash)
                if earlier is not None:
                    return earlier
                if refuse is not None:
                    raise refuse
                conn.execute(insert(messages).values(values))
                _audit(conn, message_id, actor, "intake", now=now, to_state=State.QUEUED)
                return IntakeResult(message_id, State.QUEUED, None, created=True,
                                    provider=provider or account.provider)
        except IntegrityError:
            continue
    raise RuntimeError("intake could neither insert nor find the message")  # pragma: no cover


def _accept_pg(values: dict[str, Any], *, actor: str, refuse: ValidationError | None,
               content_hash: str) -> IntakeResult:
    """``accept`` as one statement (pg_fastpath.ACCEPT): the same decisions, in one round
    trip instead of five."""
    rows = pg_fastpath.run(pg_fastpath.ACCEPT, {
        **values, "created_at": pg_fastpath.naive_utc(values["created_at"]), "actor": actor,
        "refuse": refuse is not None}, every_row=True)
    if not rows:  # nothing earlier and nothing inserted: only a refusal does that
        raise refuse or RuntimeError("intake inserted nothing and found nothing")
    first = rows[0]
    if first.rank == 2 and first.content_hash != content_hash:
        raise ValidationError("idempotency_conflict", "the key was used for a different message")
    return IntakeResult(first.id, first.state, first.error_code, created=first.rank == 0,
                        provider=first.provider)


def _find_earlier(conn: Connection, request_id: str | None, account_id: int, key: str | None,
                  content_hash: str) -> IntakeResult | None:
    if request_id is not None:
        earlier = _existing(conn, messages.c.request_id == request_id)
        if earlier is not None:
            return earlier
    if key is None:
        return None
    row = conn.execute(select(messages.c.id, messages.c.state, messages.c.error_code,
                              messages.c.content_hash, messages.c.provider)
                       .where(messages.c.account_id == account_id, messages.c.idempotency_key == key)
                       ).first()
    if row is None:
        return None
    if row.content_hash != content_hash:
        raise ValidationError("idempotency_conflict", "the key was used for a different message")
    return IntakeResult(row.id, row.state, row.error_code, created=False, provider=row.provider)


def reject(raw: object, error: ValidationError, *, request_id: str | None, actor: str,
           account: AccountRef | None = None, from_address: str | None = None,
           route: str | None = None, notify: str | None = None) -> IntakeResult:
    """Store a request that cannot be sent as `rejected`, with its code, once per request id
    (``route``: the rollout gate's decision, when the gate refused it). With ``notify``
    (the ``messages.notify`` column), the outcome notification is written with it."""
    now = utcnow()
    message_id = str(uuid.uuid4())
    row = dict(id=message_id, request_id=request_id, account_id=account.id if account else None,
               from_address=(from_address or "")[:320] or None,
               provider=account.provider if account else None, state=State.REJECTED.value,
               payload=_raw_payload(raw), error_code=error.code, error_detail=error.detail,
               attempt_count=0, verify_before_send=False, created_at=now, updated_at=now,
               route=route, notify=notify)
    for _ in range(2):
        try:
            with db_errors(), get_engine().begin() as conn:
                if request_id is not None:
                    earlier = _existing(conn, messages.c.request_id == request_id)
                    if earlier is not None:
                        return earlier
                conn.execute(insert(messages).values(row))
                _audit(conn, message_id, actor, "intake", now=now, to_state=State.REJECTED,
                       code=error.code)
                pending = None
                if notify is not None:
                    kwargs = notifications.outcome_kwargs(
                        message_id=message_id, state=State.REJECTED.value, error_code=error.code,
                        provider=account.provider if account else None, provider_message_id=None,
                        rfc822_message_id=None, attempts=0,
                        metadata=json.loads(notify)["metadata"], replays=0,
                        request_id=request_id)
                    pending = notifications.write(conn, notify=notify, kwargs=kwargs, now=now)
                return IntakeResult(message_id, State.REJECTED, error.code, created=True,
                                    notification=pending)
        except IntegrityError:
            continue
    raise RuntimeError("intake could neither insert nor find the rejection")  # pragma: no cover


# --- delivery ---------------------------------------------------------------------------

_CLAIMABLE = frozenset({State.QUEUED, State.RETRYING, State.SENDING})


def claim(message_id: str, *, worker: str, lease_seconds: float,
          now: dt.datetime | None = None) -> Claim | None:
    """Take the message for one attempt, or return None if it is not ours to send now.

    Claimable: `queued`; `retrying` once due; `sending` whose lease has expired (its
    attempt's outcome is unknown, so the new claim must verify before sending). Times are
    the database's clock unless ``now`` is given (tests move time).
    """
    check(set(_CLAIMABLE), State.SENDING)
    owner = f"{worker[:80]}/{uuid.uuid4().hex[:12]}"
    attempt_id = str(uuid.uuid4())
    if get_engine().dialect.name == "postgresql":
        row = pg_fastpath.run(pg_fastpath.CLAIM, {
            "message_id": message_id, "owner": owner, "lease_seconds": float(lease_seconds),
            "now": pg_fastpath.naive_utc(now), "attempt_id": attempt_id, "worker": worker[:200]})
        if row is None:
            return None
        aware = pg_fastpath.aware_utc
        return _claim(message_id, owner, attempt_id, aware(row.lease_expires_at), row,
                      created_at=aware(row.created_at),
                      retry_since=row.retry_since and aware(row.retry_since),
                      verify_since=row.verify_since and aware(row.verify_since),
                      db_now=aware(row.db_now))
    now = now or utcnow()
    expires = now + dt.timedelta(seconds=lease_seconds)
    with db_errors(), get_engine().begin() as conn:
        row = conn.execute(_CLAIM, {"p_id": message_id, "p_now": now, "p_owner": owner,
                                    "p_expires": expires}).first()
        if row is None:
            return None
        if row.prev_state == State.SENDING.value:
            conn.execute(_CLOSE_EXPIRED, {"p_id": message_id, "p_now": now})
        conn.execute(_INSERT_ATTEMPT, {"id": attempt_id, "message_id": message_id,
                                       "number": row.attempt_count, "worker": worker[:200],
                                       "started_at": now})
        _audit(conn, message_id, owner, "claim", now=now, from_state=row.prev_state,
               to_state=State.SENDING)
    return _claim(message_id, owner, attempt_id, expires, row, created_at=row.created_at,
                  retry_since=row.retry_since, verify_since=row.verify_since, db_now=now)


def _claim(message_id: str, owner: str, attempt_id: str, expires: dt.datetime, row: Any, *,
           created_at: dt.datetime, retry_since: dt.datetime | None,
           verify_since: dt.datetime | None, db_now: dt.datetime) -> Claim:
    return Claim(message_id=message_id, owner=owner, attempt_id=attempt_id,
                 attempt_number=row.attempt_count, provider=row.provider,
                 from_address=row.from_address, rfc822_message_id=row.rfc822_message_id,
                 payload=row.payload, created_at=created_at, lease_expires_at=expires,
                 verify=bool(row.verify_before_send), retry_base=row.retry_base,
                 retry_since=retry_since, db_now=db_now,
                 took_over=row.prev_state == State.SENDING.value, takeovers=row.takeovers,
                 verify_since=verify_since, recorded_provider_id=row.provider_message_id,
                 via_address=row.via_address)


@dataclass(frozen=True)
class Renewal:
    """A lease renewed: seconds left on the database's clock, and a provider id that a
    late send recorded meanwhile (then nothing may be sent)."""

    seconds_left: float
    recorded_provider_id: str | None


_RENEW_PG = text("""
    UPDATE messages
    SET lease_expires_at = (now() AT TIME ZONE 'UTC')::timestamp + make_interval(secs => :lease)
    WHERE id = :id AND state = 'sending' AND lease_owner = :owner
    RETURNING provider_message_id
""")


def renew(claim: Claim, *, lease_seconds: float) -> Renewal | None:
    """Extend this claim's lease to ``lease_seconds`` from now; None when it is not ours
    any more (another worker took the message over, or it moved on). One statement,
    only while a send runs long: a normal send never renews."""
    if get_engine().dialect.name == "postgresql":
        with db_errors(), get_autocommit_engine().connect() as conn:
            row = conn.execute(_RENEW_PG, {"id": claim.message_id, "owner": claim.owner,
                                           "lease": float(lease_seconds)}).first()
        return Renewal(float(lease_seconds), row.provider_message_id) if row else None
    now = utcnow()
    with db_errors(), get_engine().begin() as conn:
        row = conn.execute(
            update(messages)
            .where(_m.id == claim.message_id, _m.state == State.SENDING.value,
                   _m.lease_owner == claim.owner)
            .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
            .returning(_m.provider_message_id)).first()
    return Renewal(float(lease_seconds), row.provider_message_id) if row else None


@dataclass(frozen=True)
class Finished:
    """What a finish did: ``held`` (false: the lease was lost, nothing moved; the object
    is falsy then), and the outcome notification it wrote, to publish after the commit."""

    held: bool
    notification: Pending | None = None

    def __bool__(self) -> bool:
        return self.held


def _notify_outcome(conn: Connection, message_id: str, outcome: Outcome, row: Any,
                    now: dt.datetime) -> Pending | None:
    """The obligation to publish a final outcome, if the message (``row``: the finish's
    returned columns) has a ``notify``; what pg_fastpath.FINISH_SQL writes (the kwargs
    equal as JSON, not byte for byte)."""
    if row.notify is None:
        return None
    kwargs = notifications.outcome_kwargs(
        message_id=message_id, state=outcome.state.value, error_code=outcome.code,
        provider=row.provider, provider_message_id=row.provider_message_id,
        rfc822_message_id=row.rfc822_message_id, attempts=row.attempt_count,
        metadata=json.loads(row.notify)["metadata"], replays=row.replays,
        request_id=row.request_id)
    return notifications.write(conn, notify=row.notify, kwargs=kwargs, now=now)


def _pending_from_row(row: Any) -> Pending | None:
    if row is None or row.notification_id is None:
        return None
    kwargs = json.loads(row.kwargs)
    return Pending(int(row.notification_id), kwargs["id"], row.task, row.queue, kwargs)


def finish(claim: Claim, outcome: Outcome, *, latency_ms: int | None,
           now: dt.datetime | None = None) -> Finished:
    """Record the attempt and move the message on, only if this claim still holds the lease.

    A final outcome (sent, failed) of a message with a ``notify`` writes its outcome
    notification in the same transaction (``Finished.notification``).

    Returns a falsy Finished when the lease was lost (another worker took the message over); the
    attempt row is still closed so that the history shows what this worker saw, and a
    provider id of a send that succeeded all the same goes on the message, so the new
    owner never sends it again. On PostgreSQL the times are the database's clock unless
    ``now`` is given; a retry with a ``wait`` is then due that long after that clock.
    """
    check({State.SENDING}, outcome.state)
    attempt_outcome = {State.SENT: "sent", State.RETRYING: "retry", State.FAILED: "failed"}[outcome.state]
    detail = outcome.note or outcome.detail
    lost_reason = f"attempt ended {attempt_outcome} after the lease was lost"
    sent = outcome.state is State.SENT
    if get_engine().dialect.name == "postgresql":
        retry_in = outcome.wait if now is None and outcome.next_attempt_at is not None else None
        row = pg_fastpath.run(pg_fastpath.FINISH, {
            "message_id": claim.message_id, "owner": claim.owner, "attempt_id": claim.attempt_id,
            "state": outcome.state.value, "now": pg_fastpath.naive_utc(now),
            "verify": outcome.verify, "code": outcome.code, "detail": outcome.detail,
            "next_attempt_at": pg_fastpath.naive_utc(outcome.next_attempt_at), "sent": sent,
            "provider_message_id": outcome.provider_message_id,
            "attempt_outcome": attempt_outcome, "attempt_detail": detail,
            "latency_ms": latency_ms, "note": outcome.note, "lost_reason": lost_reason,
            "retry_in": retry_in, "provider_ms": outcome.provider_ms,
            "notify_retry_after": get_settings().notify_retry_after,
        })
        return Finished(bool(row and row.moved), _pending_from_row(row))
    now = now or outcome.ended_at or utcnow()
    params = {"p_id": claim.message_id, "p_owner": claim.owner, "p_state": outcome.state.value,
              "p_now": now, "p_verify": outcome.verify, "p_code": outcome.code,
              "p_detail": outcome.detail, "p_next": outcome.next_attempt_at,
              "p_provider_id": outcome.provider_message_id, "p_attempt": claim.attempt_id,
              "p_outcome": attempt_outcome, "p_attempt_detail": detail, "p_latency": latency_ms,
              "p_provider_ms": outcome.provider_ms,
              "p_verify_since": now if outcome.verify else None}
    pending = None
    with db_errors(), get_engine().begin() as conn:
        moved = conn.execute(_FINISH_SENT if sent else _FINISH, params).first()
        conn.execute(_CLOSE_ATTEMPT, params)
        if moved is not None:
            _record_health(conn, claim.message_id, outcome, now)
            _audit(conn, claim.message_id, claim.owner, "finish", now=now,
                   from_state=State.SENDING, to_state=outcome.state, code=outcome.code,
                   reason=outcome.note)
            if outcome.state in FINAL:
                pending = _notify_outcome(conn, claim.message_id, outcome, moved, now)
        else:
            if sent and outcome.provider_message_id:
                conn.execute(_RECORD_LATE_SENT, params)
            _audit(conn, claim.message_id, claim.owner, "lease_lost", now=now, code=outcome.code,
                   reason=lost_reason)
    return Finished(moved is not None, pending)


RATE_LIMITED_CODE = "rate_limited"


def release(claim: Claim, *, reason: str, until: dt.datetime | None = None,
            wait: float | None = None, now: dt.datetime | None = None,
            code: str | None = RATE_LIMITED_CODE, action: str = "rate_limited") -> bool:
    """Give the message back, unsent and without an attempt: something held the send back
    before anything reached the provider (the mailbox's rate limit; the provider's
    lookups not settled yet after an attempt of unknown outcome).

    Due at ``until``, or ``wait`` seconds after the database's clock says now. ``code``
    None keeps the message's error code as it is.

    Only while this claim holds the lease, in one transaction: the claim's attempt row is
    deleted and ``attempt_count`` goes back down (a limited send spends no retry budget),
    the message moves `sending → retrying` due at ``until``, ``verify_before_send`` stays
    as the claim found it, and the audit says why (action ``rate_limited``). Returns False
    when the lease was lost: then the attempt stays (the new owner has counted it) and is
    closed if nobody did. Runs only when limited, so it takes the portable path on every
    backend.
    """
    check({State.SENDING}, State.RETRYING)
    if (until is None) == (wait is None):
        raise ValueError("give until or wait")
    m = messages.c
    with db_errors(), get_engine().begin() as conn:
        now = now or database_now(conn)
        due = until if until is not None else now + dt.timedelta(seconds=wait or 0.0)
        errors = {} if code is None else {"error_code": code, "error_detail": reason}
        moved = conn.execute(
            update(messages)
            .where(m.id == claim.message_id, m.state == State.SENDING.value, m.lease_owner == claim.owner)
            .values(prev_state=m.state, state=State.RETRYING.value, updated_at=now, lease_owner=None,
                    lease_expires_at=None, attempt_count=m.attempt_count - 1,
                    verify_before_send=claim.verify, next_attempt_at=due, **errors)
        ).rowcount
        if moved:
            conn.execute(delete(attempts).where(attempts.c.id == claim.attempt_id))
            _audit(conn, claim.message_id, claim.owner, action, now=now,
                   from_state=State.SENDING, to_state=State.RETRYING, code=code, reason=reason)
        else:
            conn.execute(update(attempts)
                         .where(attempts.c.id == claim.attempt_id, attempts.c.outcome.is_(None))
                         .values(finished_at=now, outcome="retry", error_code=code, detail=reason))
            _audit(conn, claim.message_id, claim.owner, "lease_lost", now=now, code=code,
                   reason=f"held back ({action}) after the lease was lost")
    return bool(moved)


def _record_health(conn: Connection, message_id: str, outcome: Outcome, now: dt.datetime) -> None:
    """The account's health after an attempt; the same rules as pg_fastpath's ``health``."""
    if outcome.state is State.SENT:
        stale = now - dt.timedelta(seconds=pg_fastpath.SUCCESS_STAMP_SECONDS)
        conn.execute(_HEALTH_SENT, {"p_id": message_id, "p_now": now, "p_stale": stale})
    else:
        conn.execute(_HEALTH_FAILED, {"p_id": message_id, "p_now": now, "p_code": outcome.code,
                                      "p_detail": outcome.detail})


@dataclass(frozen=True)
class Brief:
    state: str
    provider: str | None
    next_attempt_at: dt.datetime | None
    lease_expires_at: dt.datetime | None
    # Seconds until next_attempt_at on the database's clock, the one the claim judges by.
    due_in: float | None = None


def brief(message_id: str) -> Brief | None:
    """The few columns that say why a message could not be claimed."""
    m = messages.c
    with db_errors(), get_engine().connect() as conn:
        row = conn.execute(select(m.state, m.provider, m.next_attempt_at, m.lease_expires_at)
                           .where(m.id == message_id)).first()
        now = database_now(conn) if row is not None and row.next_attempt_at else None
    if row is None:
        return None
    due_in = (row.next_attempt_at - now).total_seconds() if now and row.next_attempt_at else None
    return Brief(row.state, row.provider, row.next_attempt_at, row.lease_expires_at, due_in)


# --- reading ----------------------------------------------------------------------------

def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def status(message_id: str) -> dict[str, Any] | None:
    """Everything on-call needs about one message, and no content."""
    with db_errors(), get_engine().connect() as conn:
        msg = conn.execute(select(messages).where(messages.c.id == message_id)).first()
        if msg is None:
            return None
        tries = conn.execute(select(attempts).where(attempts.c.message_id == message_id)
                             .order_by(attempts.c.number)).all()
        history = conn.execute(select(audit).where(audit.c.message_id == message_id)
                               .order_by(audit.c.id)).all()
        told = notifications.of_message(conn, message_id)
    return {
        "id": msg.id, "state": msg.state, "error_code": msg.error_code,
        "error_detail": msg.error_detail, "provider": msg.provider, "account": msg.from_address,
        "message_id_header": msg.rfc822_message_id, "provider_message_id": msg.provider_message_id,
        "idempotency_key": msg.idempotency_key, "size_bytes": msg.size_bytes,
        "html_removed": msg.html_removed,
        "route": json.loads(msg.route) if msg.route else None, "via": msg.via_address,
        "recipient_count": msg.recipient_count, "attempt_count": msg.attempt_count,
        "created_at": _iso(msg.created_at), "updated_at": _iso(msg.updated_at),
        "sent_at": _iso(msg.sent_at), "next_attempt_at": _iso(msg.next_attempt_at),
        # Set once the retention job dropped the content: it can no longer be replayed.
        "payload_purged_at": _iso(msg.payload_purged_at),
        "attempts": [_attempt_dict(a) for a in tries],
        "history": [_audit_dict(h) for h in history],
        # Where the outcome is published (null: nobody is told), and each notification.
        "notify": _notify_target(msg.notify),
        "notifications": told,
    }


def _notify_target(notify: str | None) -> dict[str, str] | None:
    if notify is None:
        return None
    target = json.loads(notify)
    return {"task": target["task"], "queue": target["queue"]}


def _attempt_dict(row: Any) -> dict[str, Any]:
    return {"number": row.number, "worker": row.worker, "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at), "outcome": row.outcome,
            "error_code": row.error_code, "detail": row.detail, "latency_ms": row.latency_ms,
            "provider_ms": row.provider_ms}


def _audit_dict(row: Any) -> dict[str, Any]:
    return {"at": _iso(row.at), "actor": row.actor, "action": row.action,
            "from_state": row.from_state, "to_state": row.to_state, "code": row.code,
            "reason": row.reason}
