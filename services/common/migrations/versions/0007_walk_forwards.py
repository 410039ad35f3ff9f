"""walk_forwards: walk-forwards in the work queue

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 17:00:00

``POST /v1/walk-forwards`` (the backtest service) checks a walk-forward's plan and queues it
here; a pipeline worker (``hsig pipeline worker``) claims it and runs it. The table carries the
queue columns every long-job table has (``QueueColumns``) plus the walk-forward's own name (its
state file), the worker's last progress line and a summary of the pooled figures. A new table:
no stored row changes; the downgrade drops it (losing only the queue's record of walk-forwards,
not their state files or reports).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import services.common.db.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = services.common.db.models.UTCDateTime(timezone=True)
    op.create_table(
        "walk_forwards",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", when, nullable=True),
        sa.Column("available_at", when, nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("started_at", when, nullable=True),
        sa.Column("finished_at", when, nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("progress", sa.Text(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("walk_forwards", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_walk_forwards_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_walk_forwards_name"), ["name"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_walk_forwards_idempotency_key"), ["idempotency_key"], unique=True
        )


def downgrade() -> None:
    op.drop_table("walk_forwards")
