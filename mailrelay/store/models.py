"""The outbox schema: accounts, messages, attempts, audit, notifications, sink deliveries,
rollouts.

The database is the source of truth for every message; the broker only carries ids.
Columns needed by later guarantees (leases, verify-before-send, next_attempt_at,
request ids) exist from the first migration so that nothing is redesigned.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Named constraints keep alembic migrations identical on PostgreSQL and SQLite.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zones; storing naive UTC there and re-attaching UTC on the way
    out keeps comparisons in Python and SQL the same everywhere.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


PENDING = "state IN ('queued', 'sending', 'retrying')"
# Ended messages whose payload is still kept, and those whose payload is gone: what the
# retention job (mailrelay/store/retention.py) walks, oldest first. Its queries repeat
# these predicates word for word, so that both backends can use the partial indexes.
ENDED = "state IN ('sent', 'failed', 'rejected')"
PAYLOAD_KEPT = f"payload_purged_at IS NULL AND {ENDED}"
PAYLOAD_PURGED = "payload_purged_at IS NOT NULL"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    provider: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(20), default="active")
    client_id: Mapped[str | None] = mapped_column(String(200))
    tenant: Mapped[str | None] = mapped_column(String(200))
    app_only: Mapped[bool] = mapped_column(Boolean, default=False)
    # Fernet tokens; never decrypted outside mailrelay.auth.
    client_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    refresh_token_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_refresh_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Attempts that ended without a send since the last one that sent.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error_detail: Mapped[str | None] = mapped_column(Text)
    # "off" or "sanitize"; NULL follows MAILRELAY_HTML_POLICY.
    html_policy: Mapped[str | None] = mapped_column(String(16))


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # Unique per account. Partial: most messages carry no key, and leaving them out of
        # the index spares every state change of theirs one index write (an UPDATE that
        # changes state is never HOT, so it writes every index the new row belongs in).
        Index("uq_messages_account_idempotency", "account_id", "idempotency_key", unique=True,
              postgresql_where=text("idempotency_key IS NOT NULL"),
              sqlite_where=text("idempotency_key IS NOT NULL")),
        # Partial indexes: only messages still in flight (for the reconciler) and failed ones
        # (for on-call) are indexed by state. A message reaching `sent` leaves them with no
        # index write, which keeps the deliver path's UPDATEs cheap.
        Index("ix_messages_pending", "state", "next_attempt_at",
              postgresql_where=text(PENDING), sqlite_where=text(PENDING)),
        Index("ix_messages_failed", "updated_at",
              postgresql_where=text("state = 'failed'"), sqlite_where=text("state = 'failed'")),
        # The retention job's two walks. A message enters the first when it ends (one index
        # write on the deliver path, at the finish), moves to the second when its payload
        # is dropped, and leaves it when it is deleted: neither walk scans the table.
        Index("ix_messages_payload_kept", "updated_at",
              postgresql_where=text(PAYLOAD_KEPT), sqlite_where=text(PAYLOAD_KEPT)),
        Index("ix_messages_payload_purged", "updated_at",
              postgresql_where=text(PAYLOAD_PURGED), sqlite_where=text(PAYLOAD_PURGED)),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The intake's own id (the Celery task id): a redelivered intake finds its earlier row.
    request_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    from_address: Mapped[str | None] = mapped_column(String(320))
    provider: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(20))
    # Set by every transition from the old value, so one UPDATE ... RETURNING tells both.
    prev_state: Mapped[str | None] = mapped_column(String(20))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    rfc822_message_id: Mapped[str | None] = mapped_column(String(400), index=True)
    # The message as validated at intake (JSON); NULL once the retention job dropped it
    # (MAILRELAY_PAYLOAD_RETENTION after the message ended), or for a rejected request
    # too large or too odd to keep.
    payload: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    recipient_count: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Set when the last attempt may have reached the provider: ask it before resending.
    verify_before_send: Mapped[bool] = mapped_column(Boolean, default=False)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # How many things sanitizing removed from the producer's HTML; NULL if not sanitized.
    html_removed: Mapped[int | None] = mapped_column(Integer)
    # Operator replays (failed → queued). A replay opens a fresh retry budget: attempts
    # count from retry_base (attempt_count at the replay), the window from retry_since.
    replays: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    retry_base: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    retry_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Claims that took the message over from an expired lease (its worker died or hung).
    takeovers: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # When the last attempt of unknown outcome can no longer have been in flight; the
    # provider's lookups are asked only a settle time after it (they lag behind sends).
    verify_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The rollout gate's decision at intake (JSON: decision, reason, bucket, percent...);
    # NULL when no rollout applied.
    route: Mapped[str | None] = mapped_column(Text)
    # The account that sends the message when it is not the sender's own (a rollout's
    # fallback); NULL: the account of from_address. An address, not a key: a removed
    # fallback account must fail the send, never fall back to the sender's own account.
    via_address: Mapped[str | None] = mapped_column(String(320))
    # Set once any attempt may have reached the provider (verify_before_send was set),
    # and never cleared: such a message never changes provider, since only that provider
    # can say whether it already sent it.
    maybe_sent: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # When the retention job dropped the payload; the rest of the row (hash, size,
    # Message-ID, provider id) and its attempts and audit stay until the row goes.
    payload_purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Where the producer wants to hear how the message ended, as JSON {"task", "queue",
    # "metadata"} (the producer's own metadata, kept apart from the payload: it outlives
    # the payload's retention, and the finish reads it without parsing the content).
    # NULL: nobody is told.
    notify: Mapped[str | None] = mapped_column(Text)


NOTIFY_PENDING = "state = 'pending'"


class Notification(Base):
    """The obligation to tell a producer how its message ended (mailrelay/notify.py).

    Written in the transaction that moves the message to a final state; ``pending``
    until the broker has accepted the outcome task, then ``published``. One per life of
    the message: ``replays`` is the message's replay count when it ended.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("message_id", "replays", name="uq_notifications_message_replays"),
        # The reconciler's and `notify pending`'s walk: pending ones only, due first.
        Index("ix_notifications_pending", "next_try_at",
              postgresql_where=text(NOTIFY_PENDING), sqlite_where=text(NOTIFY_PENDING)),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"))
    replays: Mapped[int] = mapped_column(Integer)
    # The message's final state this notification reports: sent, failed or rejected.
    outcome: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20))  # pending | published
    task: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(200))
    # The task's kwargs as JSON: ids, codes and the producer's metadata, never content.
    kwargs: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # When the reconciler may publish it (again): a while after it was written, so that
    # it does not race the worker's own publish; later after each failed try.
    next_try_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    tries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The stable code of the last failed publish (broker_unavailable, queue_not_found).
    last_error: Mapped[str | None] = mapped_column(String(64))


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("message_id", "number", name="uq_attempts_message_number"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Looked up by uq_attempts_message_number, whose first column it is: an index of its
    # own would only cost every attempt a write.
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"))
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # NULL while the attempt runs; still NULL after a crash, which means "unknown".
    outcome: Mapped[str | None] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    # Time inside the provider's requests: latency_ms (and the claim and finish around it)
    # less this is what mailrelay added to the send.
    provider_ms: Mapped[float | None] = mapped_column(Float)


class AuditEntry(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    message_id: Mapped[str | None] = mapped_column(String(36), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str | None] = mapped_column(String(20))
    code: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)


class SinkDelivery(Base):
    """What the sink provider 'sent': the test and benchmark stand-in for a mailbox."""

    __tablename__ = "sink_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(36), index=True)
    rfc822_message_id: Mapped[str] = mapped_column(String(400), index=True)
    sender: Mapped[str] = mapped_column(String(320))
    envelope: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    delivered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Rollout(Base):
    """One provider's rollout: who its gate admits, and where the controller stands.

    Every change (the controller's or an operator's) is one UPDATE conditional on
    ``version`` together with its ``rollout_decisions`` row.
    """

    __tablename__ = "rollouts"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))  # enforce | dry_run
    state: Mapped[str] = mapped_column(String(16))  # running | paused | aborted | complete
    # Share of senders admitted, in basis points (0-10000).
    percent_bp: Mapped[int] = mapped_column(Integer)
    salt: Mapped[str] = mapped_column(String(64))
    # Comma-separated recipient domains; NULL: any recipient.
    internal_domains: Mapped[str | None] = mapped_column(Text)
    # The account that sends what the gate does not admit; NULL: rejected (rollout_gated).
    fallback: Mapped[str | None] = mapped_column(String(320))
    # Comma-separated ladder steps in basis points, ascending.
    ladder: Mapped[str] = mapped_column(String(200))
    dwell_seconds: Mapped[int] = mapped_column(Integer)
    window_seconds: Mapped[int] = mapped_column(Integer)
    error_warn: Mapped[float] = mapped_column(Float)
    error_critical: Mapped[float] = mapped_column(Float)
    latency_p95: Mapped[float] = mapped_column(Float)
    min_rate: Mapped[float] = mapped_column(Float)
    consecutive_successes: Mapped[int] = mapped_column(Integer)
    failure_limit: Mapped[int] = mapped_column(Integer)
    consecutive_error_limit: Mapped[int] = mapped_column(Integer)
    # Comma-separated error codes that count as the provider's; NULL: the default list.
    error_codes: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    # The controller's bookkeeping at the current step.
    step_started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    successes: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer)
    query_errors: Mapped[int] = mapped_column(Integer)
    last_evaluated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class RolloutDecision(Base):
    """Every change of a rollout and every evaluation, with what it read and who made it.
    No key to ``rollouts``: the history outlives a removed rollout."""

    __tablename__ = "rollout_decisions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    decision: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    # JSON: what the decision read (traffic, error_ratio, latency_p95) or the settings changed.
    inputs: Mapped[str | None] = mapped_column(Text)
    percent_before: Mapped[int | None] = mapped_column(Integer)
    percent_after: Mapped[int | None] = mapped_column(Integer)
    state_after: Mapped[str | None] = mapped_column(String(16))
    # True for a decision computed in dry_run mode: recorded, never applied.
    dry_run: Mapped[bool] = mapped_column(Boolean)
    actor: Mapped[str] = mapped_column(String(200))
    version: Mapped[int | None] = mapped_column(Integer)


# Typed handles on the tables for Core statements (``Model.__table__`` is typed loosely).
ACCOUNTS = cast(Table, Account.__table__)
MESSAGES = cast(Table, MessageRow.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)
AUDIT = cast(Table, AuditEntry.__table__)
SINK_DELIVERIES = cast(Table, SinkDelivery.__table__)
ROLLOUTS = cast(Table, Rollout.__table__)
ROLLOUT_DECISIONS = cast(Table, RolloutDecision.__table__)
NOTIFICATIONS = cast(Table, Notification.__table__)
