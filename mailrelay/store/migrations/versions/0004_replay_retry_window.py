"""Replays: a count, and a fresh retry budget for a replayed message.

``messages.replays`` counts operator replays. ``retry_base`` is ``attempt_count`` at the
last replay and ``retry_since`` when that replay happened: the retry policy counts
attempts from ``retry_base`` and the retry window from ``retry_since`` (else
``created_at``), so that a replayed message gets the retries a new one would.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replays", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("retry_base", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("retry_since", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("retry_since")
        batch_op.drop_column("retry_base")
        batch_op.drop_column("replays")
