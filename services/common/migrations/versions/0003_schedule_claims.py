"""schedule claims; holder and heartbeat on backtest runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 03:20:00

Several replicas of a service may share one database. ``schedule_claims`` lets exactly one of
them run each slot of a scheduled job (the first insert of a (job, slot) pair lands, the key
refuses the rest). A backtest run records which scheduler runs its current attempt and when it
last renewed that (``holder``, ``heartbeat_at``), so a run whose replica died is taken over by
another. Both columns are nullable: rows stored before keep working and lose nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import services.common.db.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedule_claims",
        sa.Column("job", sa.String(length=128), nullable=False),
        sa.Column("slot", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("claimed_at", services.common.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", "slot"),
    )
    with op.batch_alter_table("backtest_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("holder", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("heartbeat_at", services.common.db.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("backtest_runs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("holder")
    op.drop_table("schedule_claims")
