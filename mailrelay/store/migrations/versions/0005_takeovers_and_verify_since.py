"""Takeovers of an expired lease, and since when a message's last send is unsettled.

``messages.takeovers`` counts claims that took the message over from a worker whose lease
expired (the worker died or hung mid-attempt): past MAILRELAY_MAX_TAKEOVERS the message
fails as ``worker_lost`` instead of killing workers forever. ``verify_since`` is the
moment after which the last attempt of unknown outcome can no longer have been in flight
(its lease's end, or when it ended): the provider's lookups are asked only
MAILRELAY_VERIFY_SETTLE_SECONDS after it, because they lag behind a send.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("takeovers", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("verify_since", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("verify_since")
        batch_op.drop_column("takeovers")
