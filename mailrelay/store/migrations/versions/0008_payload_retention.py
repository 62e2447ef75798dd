"""Bounded storage: a message's payload is dropped, and later the whole row, after it ended.

- ``messages.payload_purged_at``: when the retention job dropped the payload (set to NULL;
  the column was nullable already). The content hash, size, Message-ID, provider id,
  attempts and audit stay until the row itself goes.
- ``ix_messages_payload_kept`` (ended messages that still hold their payload) and
  ``ix_messages_payload_purged`` (messages whose payload is gone), both on ``updated_at``,
  which for an ended message is when it ended: the job walks each oldest first and
  never scans the table. A message is written into the first once, when it ends.

Both indexes are built inside the migration's transaction, each a full scan of
``messages`` during which intake and delivery cannot write to it (not measured on a large
table): on a large outbox, run it at a quiet time. Nothing is dropped
until the new workers' beat job (or `mailrelay db purge`) runs.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The models' predicates, copied: a migration must not change when the models do.
KEPT = sa.text("payload_purged_at IS NULL AND state IN ('sent', 'failed', 'rejected')")
PURGED = sa.text("payload_purged_at IS NOT NULL")


def upgrade() -> None:
    # batch_alter_table: SQLite adds the column in place (a nullable column needs no copy).
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payload_purged_at", sa.DateTime(), nullable=True))
    op.create_index("ix_messages_payload_kept", "messages", ["updated_at"], unique=False,
                    postgresql_where=KEPT, sqlite_where=KEPT)
    op.create_index("ix_messages_payload_purged", "messages", ["updated_at"], unique=False,
                    postgresql_where=PURGED, sqlite_where=PURGED)


def downgrade() -> None:
    op.drop_index("ix_messages_payload_purged", table_name="messages")
    op.drop_index("ix_messages_payload_kept", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("payload_purged_at")
