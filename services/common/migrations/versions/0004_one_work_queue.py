"""one work queue: training_jobs.worker_id becomes holder; available_at on both queues

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00

Training jobs and backtest runs now move through one work queue (``services.common.queue``)
with one vocabulary: the process running an item's current attempt is its ``holder`` on both
tables (``training_jobs.worker_id`` is renamed, its values kept), and a ``retrying`` item is
claimable again from ``available_at`` (new, nullable: None means at once, which is how every
stored row behaves today). No state changes meaning, so no stored state is rewritten; the
downgrade renames the column back and drops ``available_at``, losing only retry times.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import services.common.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("training_jobs", "backtest_runs")


def upgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.alter_column("worker_id", new_column_name="holder", existing_type=sa.String(length=128))
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("available_at", services.common.db.models.UTCDateTime(timezone=True), nullable=True)
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("available_at")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.alter_column("holder", new_column_name="worker_id", existing_type=sa.String(length=128))
