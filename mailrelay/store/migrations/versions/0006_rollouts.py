"""Provider rollouts: the rollout rows, their decisions, and the route of each message.

``rollouts`` holds one row per provider under rollout (who the gate admits, the ladder,
the thresholds, the controller's bookkeeping, ``version`` for conditional updates);
``rollout_decisions`` every change and evaluation. ``messages.route`` is the gate's
decision at intake (JSON), ``messages.via_address`` the account that sends a message
routed through a fallback, and ``messages.maybe_sent`` marks, for good, a message one of
whose attempts may have reached its provider (it never changes provider).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("percent_bp", sa.Integer(), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("internal_domains", sa.Text(), nullable=True),
        sa.Column("fallback", sa.String(length=320), nullable=True),
        sa.Column("ladder", sa.String(length=200), nullable=False),
        sa.Column("dwell_seconds", sa.Integer(), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("error_warn", sa.Float(), nullable=False),
        sa.Column("error_critical", sa.Float(), nullable=False),
        sa.Column("latency_p95", sa.Float(), nullable=False),
        sa.Column("min_rate", sa.Float(), nullable=False),
        sa.Column("consecutive_successes", sa.Integer(), nullable=False),
        sa.Column("failure_limit", sa.Integer(), nullable=False),
        sa.Column("consecutive_error_limit", sa.Integer(), nullable=False),
        sa.Column("error_codes", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("step_started_at", sa.DateTime(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("query_errors", sa.Integer(), nullable=False),
        sa.Column("last_evaluated_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("provider", name=op.f("pk_rollouts")),
    )
    op.create_table(
        "rollout_decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("decision", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=True),
        sa.Column("percent_before", sa.Integer(), nullable=True),
        sa.Column("percent_after", sa.Integer(), nullable=True),
        sa.Column("state_after", sa.String(length=16), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_decisions")),
    )
    with op.batch_alter_table("rollout_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_decisions_provider"), ["provider"], unique=False)
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("route", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("via_address", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("maybe_sent", sa.Boolean(), nullable=False,
                                      server_default=sa.text("false")))
    # Messages already waiting for a verification may have reached their provider.
    messages = sa.table("messages", sa.column("maybe_sent", sa.Boolean()),
                        sa.column("verify_before_send", sa.Boolean()))
    op.execute(messages.update().where(messages.c.verify_before_send.is_(True))
               .values(maybe_sent=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("maybe_sent")
        batch_op.drop_column("via_address")
        batch_op.drop_column("route")
    with op.batch_alter_table("rollout_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_decisions_provider"))
    op.drop_table("rollout_decisions")
    op.drop_table("rollouts")
