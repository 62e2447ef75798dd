"""The claim and finish transitions as one statement each, for PostgreSQL.

The portable path in outbox.py sends the state change, the attempt row and the audit row
as separate statements: four round trips per transition with the commit. PostgreSQL runs
data-modifying CTEs, so the same effect fits in one statement and the commit: two round
trips. These statements must do exactly what the portable path does; the outbox tests
run every transition on both backends.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Integer, String, bindparam, text
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect

from mailrelay.store.models import UTCDateTime

CLAIM: TextualSelect = text("""
WITH claimed AS (
    UPDATE messages AS m
    SET prev_state = m.state, state = 'sending', lease_owner = :owner,
        lease_expires_at = :expires, attempt_count = m.attempt_count + 1, updated_at = :now,
        verify_before_send = CASE WHEN m.state = 'sending' THEN true ELSE m.verify_before_send END
    WHERE m.id = :message_id
      AND (m.state = 'queued'
           OR (m.state = 'retrying' AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= :now))
           OR (m.state = 'sending' AND m.lease_expires_at < :now))
    RETURNING m.id, m.prev_state, m.attempt_count, m.provider, m.from_address,
              m.rfc822_message_id, m.payload, m.created_at, m.verify_before_send
), closed AS (
    UPDATE attempts SET outcome = 'unknown', finished_at = :now, error_code = 'internal_error',
                        detail = 'lease expired before the attempt finished'
    WHERE message_id IN (SELECT id FROM claimed WHERE prev_state = 'sending') AND outcome IS NULL
), opened AS (
    INSERT INTO attempts (id, message_id, number, worker, started_at)
    SELECT :attempt_id, id, attempt_count, :worker, :now FROM claimed
), audited AS (
    INSERT INTO audit (message_id, at, actor, action, from_state, to_state)
    SELECT id, :now, :owner, 'claim', prev_state, 'sending' FROM claimed
)
SELECT prev_state, attempt_count, provider, from_address, rfc822_message_id, payload,
       created_at, verify_before_send
FROM claimed
""").bindparams(
    bindparam("now", type_=UTCDateTime), bindparam("expires", type_=UTCDateTime),
).columns(prev_state=String, attempt_count=Integer, provider=String, from_address=String,
          rfc822_message_id=String, payload=String, created_at=UTCDateTime,
          verify_before_send=Boolean)

FINISH: TextClause = text("""
WITH moved AS (
    UPDATE messages
    SET prev_state = state, state = :state, updated_at = :now, lease_owner = NULL,
        lease_expires_at = NULL, verify_before_send = :verify, error_code = :code,
        error_detail = :detail, next_attempt_at = :next_attempt_at,
        provider_message_id = CASE WHEN :sent THEN :provider_message_id
                                   ELSE provider_message_id END,
        sent_at = CASE WHEN :sent THEN :now ELSE sent_at END
    WHERE id = :message_id AND state = 'sending' AND lease_owner = :owner
    RETURNING id
), closed AS (
    UPDATE attempts SET finished_at = :now, outcome = :attempt_outcome, error_code = :code,
                        detail = :attempt_detail, latency_ms = :latency_ms
    WHERE id = :attempt_id
), audited AS (
    INSERT INTO audit (message_id, at, actor, action, from_state, to_state, code, reason)
    SELECT :message_id, :now, :owner, 'finish', 'sending', :state, :code, :note FROM moved
    UNION ALL
    SELECT :message_id, :now, :owner, 'lease_lost', NULL, NULL, :code, :lost_reason
    WHERE NOT EXISTS (SELECT 1 FROM moved)
)
SELECT count(*) FROM moved
""").bindparams(
    bindparam("now", type_=UTCDateTime), bindparam("next_attempt_at", type_=UTCDateTime),
    bindparam("sent", type_=Boolean), bindparam("verify", type_=Boolean),
)
