"""Partial state indexes: in-flight and failed messages only.

Every state change rewrote two full (state, ...) indexes; a message that is sent now
leaves the indexes on state without a write.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PENDING = "state IN ('queued', 'sending', 'retrying')"
FAILED = "state = 'failed'"


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_state_next_attempt")
        batch_op.drop_index("ix_messages_state_updated")
        batch_op.create_index("ix_messages_pending", ["state", "next_attempt_at"], unique=False,
                              postgresql_where=sa.text(PENDING), sqlite_where=sa.text(PENDING))
        batch_op.create_index("ix_messages_failed", ["updated_at"], unique=False,
                              postgresql_where=sa.text(FAILED), sqlite_where=sa.text(FAILED))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_failed")
        batch_op.drop_index("ix_messages_pending")
        batch_op.create_index("ix_messages_state_updated", ["state", "updated_at"], unique=False)
        batch_op.create_index("ix_messages_state_next_attempt", ["state", "next_attempt_at"],
                              unique=False)
