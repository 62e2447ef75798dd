"""Account health (last error) and the HTML content policy.

``accounts.html_policy`` overrides the global MAILRELAY_HTML_POLICY for one account
(NULL: the global one). ``accounts.last_error_code``/``last_error_detail`` keep the last
attempt that ended without a send, so that `accounts check` can name a failure that only a
send shows (send-as denied). ``messages.html_removed`` counts what sanitizing took out of
the producer's HTML (NULL: not sanitized).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("html_policy", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("last_error_code", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("last_error_detail", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("last_failure_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("html_removed", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("html_removed")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("last_failure_at")
        batch_op.drop_column("last_error_detail")
        batch_op.drop_column("last_error_code")
        batch_op.drop_column("html_policy")
