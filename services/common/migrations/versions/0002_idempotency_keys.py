"""idempotency keys on training jobs and backtest runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 01:10:00

A retried POST (the client timed out, the server had already queued the work) must not start
a second training job or backtest: the key a client sends is stored, unique, with the row.
Added as a nullable column, so rows already stored keep working and lose nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("training_jobs", "backtest_runs")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_idempotency_key"), ["idempotency_key"], unique=True)


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_idempotency_key"))
            batch_op.drop_column("idempotency_key")
