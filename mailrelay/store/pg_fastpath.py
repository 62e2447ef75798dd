"""The hot statements as one prepared statement each, for PostgreSQL: the claim and
finish transitions of the deliver path, and intake's account lookup and insert.

The portable path in outbox.py sends the state change, the attempt row and the audit row
as separate statements: with psycopg2's BEGIN and the COMMIT, six round trips per
transition. PostgreSQL runs data-modifying CTEs, so the same effect fits in one statement,
and one statement in autocommit is a transaction of its own: one round trip. The
statements are PREPAREd once per connection, because planning a four-part CTE costs as
much as running it (0.7 ms each, measured). They must do exactly what the
portable path does; the outbox tests run every transition on both backends.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg2
from psycopg2.extras import NamedTupleCursor
from sqlalchemy import PoolProxiedConnection, exc

from mailrelay.errors import TransientInfraError
from mailrelay.store.db import db_errors, get_autocommit_engine

# A send that succeeds rewrites its account's last_success_at only when the stored one is
# older than this: under load, one account row written every few seconds instead of by
# every send (each such write would queue the account's workers behind one row lock).
SUCCESS_STAMP_SECONDS = 5

# Every time in these statements is the database's clock ($n NULL) unless a caller passes
# one (tests move time): hosts whose clocks disagree then still agree on when a lease
# ends and when a retry is due. Columns are UTC without a zone (models.UTCDateTime).
CLOCK = "coalesce({param}, (now() AT TIME ZONE 'UTC')::timestamp)"

CLAIM_SQL = """
PREPARE mailrelay_claim(text, text, double precision, timestamp, text, text) AS
WITH clock AS (SELECT CLOCK4 AS now), claimed AS (
    UPDATE messages AS m
    SET prev_state = m.state, state = 'sending', lease_owner = $2,
        lease_expires_at = clock.now + make_interval(secs => $3),
        attempt_count = m.attempt_count + 1, updated_at = clock.now,
        verify_before_send = CASE WHEN m.state = 'sending' THEN true ELSE m.verify_before_send END,
        maybe_sent = CASE WHEN m.state = 'sending' THEN true ELSE m.maybe_sent END,
        takeovers = m.takeovers + CASE WHEN m.state = 'sending' THEN 1 ELSE 0 END,
        verify_since = CASE WHEN m.state = 'sending' THEN m.lease_expires_at ELSE m.verify_since END
    FROM clock
    WHERE m.id = $1
      AND (m.state = 'queued'
           OR (m.state = 'retrying' AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= clock.now))
           OR (m.state = 'sending' AND m.lease_expires_at < clock.now))
    RETURNING m.id, m.prev_state, m.attempt_count, m.provider, m.from_address,
              m.rfc822_message_id, m.payload, m.created_at, m.verify_before_send,
              m.retry_base, m.retry_since, m.takeovers, m.verify_since, m.provider_message_id,
              m.lease_expires_at, clock.now AS db_now, m.via_address
), closed AS (
    UPDATE attempts SET outcome = 'unknown', finished_at = (SELECT now FROM clock),
                        error_code = 'internal_error',
                        detail = 'lease expired before the attempt finished'
    WHERE message_id IN (SELECT id FROM claimed WHERE prev_state = 'sending') AND outcome IS NULL
), opened AS (
    INSERT INTO attempts (id, message_id, number, worker, started_at)
    SELECT $5, id, attempt_count, $6, db_now FROM claimed
), audited AS (
    INSERT INTO audit (message_id, at, actor, action, from_state, to_state)
    SELECT id, db_now, $2, 'claim', prev_state, 'sending' FROM claimed
)
SELECT prev_state, attempt_count, provider, from_address, rfc822_message_id, payload,
       created_at, verify_before_send, retry_base, retry_since, takeovers, verify_since,
       provider_message_id, lease_expires_at, db_now, via_address
FROM claimed
""".replace("CLOCK4", CLOCK.format(param="$4"))

# $9 is an absolute due time (tests), $17 the wait in seconds counted from the clock
# (workers: their own clock measures the wait, the database's places it).
FINISH_SQL = """
PREPARE mailrelay_finish(text, text, text, text, timestamp, boolean, text, text, timestamp,
                         boolean, text, text, text, integer, text, text, double precision,
                         double precision, double precision) AS
WITH clock AS (SELECT CLOCK5 AS now), moved AS (
    UPDATE messages
    SET prev_state = state, state = $4, updated_at = clock.now, lease_owner = NULL,
        lease_expires_at = NULL, verify_before_send = $6, maybe_sent = maybe_sent OR $6,
        error_code = $7, error_detail = $8,
        next_attempt_at = CASE WHEN $17 IS NULL THEN $9
                               ELSE clock.now + make_interval(secs => $17) END,
        verify_since = CASE WHEN $6 THEN clock.now ELSE NULL END,
        provider_message_id = CASE WHEN $10 THEN $11 ELSE provider_message_id END,
        sent_at = CASE WHEN $10 THEN clock.now ELSE sent_at END
    FROM clock
    WHERE id = $1 AND state = 'sending' AND lease_owner = $2
    RETURNING id, account_id, via_address, notify, replays, provider, provider_message_id,
              rfc822_message_id, attempt_count, request_id
), late AS (
    -- Sent after this worker lost its lease: the provider's id goes on the message all
    -- the same, so that whoever owns it now never sends it again.
    UPDATE messages SET provider_message_id = $11
    WHERE id = $1 AND $10 AND $11 IS NOT NULL AND provider_message_id IS NULL
      AND NOT EXISTS (SELECT 1 FROM moved)
), health AS (
    UPDATE accounts AS a
    SET last_success_at = CASE WHEN $10 THEN clock.now ELSE a.last_success_at END,
        consecutive_failures = CASE WHEN $10 THEN 0 ELSE a.consecutive_failures + 1 END,
        last_failure_at = CASE WHEN $10 THEN a.last_failure_at ELSE clock.now END,
        last_error_code = CASE WHEN $10 THEN a.last_error_code ELSE $7 END,
        last_error_detail = CASE WHEN $10 THEN a.last_error_detail ELSE $8 END
    FROM moved, clock
    -- The account that sent: a rollout's fallback, else the sender's own.
    WHERE a.id = COALESCE((SELECT v.id FROM accounts AS v WHERE v.address = moved.via_address),
                          moved.account_id)
      AND (NOT $10 OR a.consecutive_failures <> 0 OR a.last_success_at IS NULL
           OR a.last_success_at < clock.now - interval 'SUCCESS_STAMP_SECONDS seconds')
), closed AS (
    UPDATE attempts SET finished_at = (SELECT now FROM clock), outcome = $12, error_code = $7,
                        detail = $13, latency_ms = $14, provider_ms = $18
    WHERE id = $3
), audited AS (
    INSERT INTO audit (message_id, at, actor, action, from_state, to_state, code, reason)
    SELECT $1, (SELECT now FROM clock), $2, 'finish', 'sending', $4, $7, $15 FROM moved
    UNION ALL
    SELECT $1, (SELECT now FROM clock), $2, 'lease_lost', NULL, NULL, $7, $16
    WHERE NOT EXISTS (SELECT 1 FROM moved)
), notified AS (
    -- A final outcome of a message with a notify: the obligation to publish it, in this
    -- transaction (notifications.outcome_kwargs builds the same kwargs, equal as JSON).
    INSERT INTO notifications (message_id, replays, outcome, state, task, queue, kwargs,
                               created_at, next_try_at, tries)
    SELECT moved.id, moved.replays, $4, 'pending', target.value->>'task',
           target.value->>'queue',
           json_build_object('id', moved.id, 'state', $4, 'error_code', $7,
                             'provider', moved.provider,
                             'provider_message_id', moved.provider_message_id,
                             'rfc822_message_id', moved.rfc822_message_id,
                             'attempts', moved.attempt_count,
                             'metadata', target.value->'metadata',
                             'replays', moved.replays,
                             'request_id', moved.request_id)::text,
           clock.now, clock.now + make_interval(secs => $19), 0
    FROM moved CROSS JOIN clock CROSS JOIN LATERAL (SELECT moved.notify::json AS value) AS target
    WHERE moved.notify IS NOT NULL AND $4 IN ('sent', 'failed')
    RETURNING id, task, queue, kwargs
)
SELECT (SELECT count(*) FROM moved) AS moved, notified.id AS notification_id, notified.task,
       notified.queue, notified.kwargs
FROM (SELECT 1) AS one LEFT JOIN notified ON true
""".replace("SUCCESS_STAMP_SECONDS", str(SUCCESS_STAMP_SECONDS)).replace(
    "CLOCK5", CLOCK.format(param="$5"))

# Intake: the request's earlier message (by request id, then by idempotency key), else the
# new row and its audit entry. An earlier row or a refusal ($17) inserts nothing; a twin
# inserting at the same moment makes this fail on a unique constraint, and the caller's
# second pass finds the twin's row.
ACCEPT_SQL = """
PREPARE mailrelay_accept(text, text, integer, text, text, text, text, text, text, bigint,
                         integer, timestamp, integer, text, text, text, boolean, text) AS
WITH earlier AS (
    SELECT 1 AS rank, id, state, error_code, content_hash, provider FROM messages
    WHERE $2::text IS NOT NULL AND request_id = $2
    UNION ALL
    SELECT 2, id, state, error_code, content_hash, provider FROM messages
    WHERE $6::text IS NOT NULL AND account_id = $3 AND idempotency_key = $6
), inserted AS (
    INSERT INTO messages (id, request_id, account_id, from_address, provider, state,
                          idempotency_key, content_hash, rfc822_message_id, payload, size_bytes,
                          recipient_count, attempt_count, verify_before_send, created_at,
                          updated_at, html_removed, route, via_address, notify)
    SELECT $1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10, $11, 0, false, $12, $12, $13,
           $14, $15, $18
    WHERE NOT $17 AND NOT EXISTS (SELECT 1 FROM earlier)
    RETURNING id
), audited AS (
    INSERT INTO audit (message_id, at, actor, action, from_state, to_state)
    SELECT id, $12, $16, 'intake', NULL, 'queued' FROM inserted
)
SELECT 0 AS rank, id, 'queued' AS state, NULL AS error_code, NULL AS content_hash,
       $5 AS provider FROM inserted
UNION ALL
SELECT rank, id, state, error_code, content_hash, provider FROM earlier
ORDER BY 1
"""

ACCOUNT_SQL = """
PREPARE mailrelay_account(text) AS
SELECT id, address, provider, state, html_policy FROM accounts WHERE address = $1
"""

ACCEPT = ("EXECUTE mailrelay_accept(%(id)s, %(request_id)s, %(account_id)s, %(from_address)s, "
          "%(provider)s, %(idempotency_key)s, %(content_hash)s, %(rfc822_message_id)s, "
          "%(payload)s, %(size_bytes)s, %(recipient_count)s, %(created_at)s, %(html_removed)s, "
          "%(route)s, %(via_address)s, %(actor)s, %(refuse)s, %(notify)s)")
ACCOUNT = "EXECUTE mailrelay_account(%(address)s)"

CLAIM = ("EXECUTE mailrelay_claim(%(message_id)s, %(owner)s, %(lease_seconds)s, %(now)s, "
         "%(attempt_id)s, %(worker)s)")
FINISH = ("EXECUTE mailrelay_finish(%(message_id)s, %(owner)s, %(attempt_id)s, %(state)s, "
          "%(now)s, %(verify)s, %(code)s, %(detail)s, %(next_attempt_at)s, %(sent)s, "
          "%(provider_message_id)s, %(attempt_outcome)s, %(attempt_detail)s, %(latency_ms)s, "
          "%(note)s, %(lost_reason)s, %(retry_in)s, %(provider_ms)s, %(notify_retry_after)s)")


def run(statement: str, params: dict[str, Any], *, every_row: bool = False) -> Any:
    """Execute a prepared statement as a transaction of its own; its first row (a named
    tuple), if any.

    Straight on the pooled DBAPI connection: SQLAlchemy's Connection and result objects
    cost as much CPU per call as the statement does on the client. What they would do
    for us is done here: a connection that failed is invalidated (the pool opens a new
    one next time) and 'the database is away' becomes the retryable error.
    """
    try:
        # The pool hands psycopg2's own error through when it cannot connect.
        with db_errors():
            raw = get_autocommit_engine().raw_connection()
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as err:
        raise _unavailable(err) from err
    try:
        ensure_prepared(raw)
        cursor = raw.cursor(cursor_factory=NamedTupleCursor)
        try:
            cursor.execute(statement, params)
            return cursor.fetchall() if every_row else cursor.fetchone()
        finally:
            cursor.close()
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as err:
        raw.invalidate(err)
        raise _unavailable(err) from err
    except psycopg2.Error as err:
        # SQLAlchemy's form (IntegrityError for a twin, ProgrammingError for a missing
        # table, ...), the one the portable path raises and its callers, the CLI's
        # explanations and Celery's log lines already know.
        raise exc.DBAPIError.instance(statement, None, err, psycopg2.Error,
                                      hide_parameters=True) from err
    finally:
        raw.close()  # back to the pool


def _unavailable(err: Exception) -> TransientInfraError:
    return TransientInfraError("database_unavailable", type(err).__name__)


def ensure_prepared(raw: PoolProxiedConnection) -> None:
    """Prepare the statements once per database session (on first use, so that a
    connection opened before the tables exist, by a migration, does not fail). The
    pool clears ``info`` when it replaces a connection, so a new session prepares again."""
    if not raw.info.get("mailrelay_prepared"):
        cursor = raw.cursor()
        try:
            for prepare in (CLAIM_SQL, FINISH_SQL, ACCEPT_SQL, ACCOUNT_SQL):
                cursor.execute(prepare)
        finally:
            cursor.close()
        raw.info["mailrelay_prepared"] = True


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Columns are UTC without a zone (see models.UTCDateTime); raw SQL must match."""
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value else None


def aware_utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC)
