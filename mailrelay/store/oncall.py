"""On-call: list failed and rejected messages, read them for a replay, replay one message.

What a replay would do with each message (its verdict) is ``mailrelay.replay``.

A replay is the one state change an operator makes: ``failed → queued``, one conditional
UPDATE on the state with its audit row (the operator's name and reason) in one
transaction. Only a message that is still ``failed`` moves, so two replays racing for
the same message (or the same command run twice) queue it once, and a message that is
``sent`` is never queued again. The replayed message keeps its Message-ID and its
``verify_before_send`` flag: if its last attempt may have reached the provider, the next
claim asks the provider before sending. It gets a fresh retry budget (``retry_base``,
``retry_since``), as a new message would. Each replay command also leaves one
``replay_run`` audit row (no message id), so that a run that found nothing failed is on
record too.

Nothing here reads or returns message content.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select, update

from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import MESSAGES
from mailrelay.store.outbox import _audit, utcnow
from mailrelay.store.states import State, check

DEFAULT_LIMIT = 50

_m = MESSAGES.c
_COLUMNS = (_m.id, _m.state, _m.from_address, _m.provider, _m.error_code, _m.error_detail,
            _m.attempt_count, _m.updated_at, _m.created_at, _m.verify_before_send, _m.replays,
            _m.payload_purged_at)


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def failed_query(*, provider: str | None = None, account: str | None = None,
                 code: str | None = None, since: dt.datetime | None = None,
                 limit: int | None = DEFAULT_LIMIT) -> Select[Any]:
    """Failed messages, newest first. ``state = 'failed'`` ordered by ``updated_at`` is
    what the partial index ix_messages_failed holds: a failed message's ``updated_at`` is
    when it failed, and nothing else touches it until a replay takes it out of the index."""
    return _in_state(State.FAILED, provider=provider, account=account, code=code, since=since,
                     limit=limit)


def _in_state(state: State, *, provider: str | None, account: str | None, code: str | None,
              since: dt.datetime | None, limit: int | None) -> Select[Any]:
    query = select(*_COLUMNS).where(_m.state == state.value)
    if provider:
        query = query.where(_m.provider == provider)
    if account:
        query = query.where(_m.from_address == account.strip().lower())
    if code:
        query = query.where(_m.error_code == code)
    if since:
        query = query.where(_m.updated_at >= since)
    return query.order_by(_m.updated_at.desc()).limit(limit)


def failed(*, provider: str | None = None, account: str | None = None, code: str | None = None,
           since: dt.datetime | None = None, limit: int | None = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Failed messages matching every filter given, newest first; no content."""
    query = failed_query(provider=provider, account=account, code=code, since=since, limit=limit)
    with db_errors(), get_engine().connect() as conn:
        return [_failed_dict(row) for row in conn.execute(query)]


def rejected(*, provider: str | None = None, account: str | None = None,
             code: str | None = None, since: dt.datetime | None = None,
             limit: int | None = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Requests refused at intake matching every filter given, newest first; no content.

    A rejected row never changes after intake, so ``updated_at`` is when it was refused.
    No index holds rejections by time (a filter on ``state`` scans the table): this is
    an on-call listing, run by hand, not a hot path."""
    query = _in_state(State.REJECTED, provider=provider, account=account, code=code,
                      since=since, limit=limit)
    with db_errors(), get_engine().connect() as conn:
        return [{"id": row.id, "rejected_at": iso(row.updated_at), "account": row.from_address,
                 "provider": row.provider, "error_code": row.error_code,
                 "error_detail": row.error_detail} for row in conn.execute(query)]


def _failed_dict(row: Any) -> dict[str, Any]:
    return {"id": row.id, "account": row.from_address, "provider": row.provider,
            "error_code": row.error_code, "error_detail": row.error_detail,
            "attempts": row.attempt_count, "failed_at": iso(row.updated_at),
            "created_at": iso(row.created_at), "verify": bool(row.verify_before_send),
            "replays": row.replays, "payload_purged_at": iso(row.payload_purged_at)}


def rows_by_id(ids: Sequence[str]) -> dict[str, Any]:
    """The on-call columns of the messages among ``ids`` that exist, by id."""
    with db_errors(), get_engine().connect() as conn:
        return {row.id: row for row in conn.execute(select(*_COLUMNS).where(_m.id.in_(list(ids))))}


def failed_rows(*, provider: str | None = None, account: str | None = None,
                code: str | None = None, since: dt.datetime | None = None,
                limit: int | None = None) -> list[Any]:
    """The on-call columns of the failed messages matching every filter, newest first."""
    query = failed_query(provider=provider, account=account, code=code, since=since, limit=limit)
    with db_errors(), get_engine().connect() as conn:
        return list(conn.execute(query))


def replay(message_id: str, *, operator: str, reason: str, now: dt.datetime | None = None) -> bool:
    """Queue a failed message again and audit who did it and why; False (nothing written)
    if it is not failed (any more): sent, in flight, or replayed by someone else meanwhile;
    or if its payload was dropped meanwhile (there is nothing left to send).

    The error code and detail are cleared: a queued message has no error, and `status`,
    `send --wait` and idempotent repeats read ``error_code`` as the message's current
    error. The failure replayed stays on its attempt row and in the replay's audit row.
    The caller enqueues the delivery; if it cannot, the reconciler finds the message
    queued and untouched after MAILRELAY_RECONCILE_AFTER.
    """
    check({State.FAILED}, State.QUEUED)
    now = now or utcnow()
    still_failed = (_m.id == message_id, _m.state == State.FAILED.value,
                    _m.payload_purged_at.is_(None))
    with db_errors(), get_engine().begin() as conn:
        # Only for the audit row; the conditional UPDATE below decides.
        code = conn.execute(select(_m.error_code).where(*still_failed)).first()
        if code is None:
            return False
        moved = conn.execute(update(MESSAGES).where(*still_failed).values(
            prev_state=_m.state, state=State.QUEUED.value, error_code=None, error_detail=None,
            next_attempt_at=None, lease_owner=None, lease_expires_at=None,
            replays=_m.replays + 1, retry_base=_m.attempt_count, retry_since=now, updated_at=now,
        )).rowcount
        if not moved:
            return False
        _audit(conn, message_id, operator, "replay", now=now, from_state=State.FAILED,
               to_state=State.QUEUED, code=code.error_code, reason=reason)
    return True


def record_run(*, operator: str, reason: str, code: str | None = None,
               now: dt.datetime | None = None) -> None:
    """Audit one replay command as a whole (``replay_run``, no message id), also when it
    finds nothing failed any more: who asked, and why. Each message it queues has its own
    ``replay`` row."""
    with db_errors(), get_engine().begin() as conn:
        _audit(conn, None, operator, "replay_run", now=now or utcnow(), code=code, reason=reason)



def states_by_request(request_ids: Sequence[str]) -> dict[str, str]:
    """The state of each message intake stored for these Celery task ids (a producer's
    handle on what it sent); ids intake has not stored yet are absent."""
    if not request_ids:
        return {}
    with db_errors(), get_engine().connect() as conn:
        rows = conn.execute(select(_m.request_id, _m.state)
                            .where(_m.request_id.in_(list(request_ids)))).all()
    return {row.request_id: row.state for row in rows}
