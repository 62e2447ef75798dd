"""The time each attempt spent inside the provider's requests, and two index writes fewer
per state change.

- ``attempts.provider_ms`` is measured around the provider's requests (a verification's
  lookups included); the attempt's span from claim to finish less it is what mailrelay
  added to the send, which `mailrelay bench` reports as the overhead per send.
- ``uq_messages_account_idempotency`` becomes a partial unique index over the messages
  that carry a key. Keys stay unique per account exactly as before (NULLs never collided),
  but an UPDATE that changes a message's state is never HOT, so it writes an entry in
  every index the new row belongs in: most messages carry no key, and now skip this one.
- ``ix_attempts_message_id`` is dropped: ``uq_attempts_message_number`` starts with the
  same column and serves every lookup by message.

The index is built inside the migration's transaction, with the table locked: about a
second per million messages with keys on PostgreSQL. Run it at a quiet time.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KEYED = sa.text("idempotency_key IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_ms", sa.Float(), nullable=True))
        batch_op.drop_index("ix_attempts_message_id")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint("uq_messages_account_idempotency", type_="unique")
    op.create_index("uq_messages_account_idempotency", "messages", ["account_id", "idempotency_key"],
                    unique=True, postgresql_where=KEYED, sqlite_where=KEYED)


def downgrade() -> None:
    op.drop_index("uq_messages_account_idempotency", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_messages_account_idempotency",
                                          ["account_id", "idempotency_key"])
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index("ix_attempts_message_id", ["message_id"], unique=False)
        batch_op.drop_column("provider_ms")
