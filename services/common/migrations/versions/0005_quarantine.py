"""quarantine: headlines and candles that cannot be used are marked, not deleted

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00

A headline that cannot be labelled (a time outside the plausible range) or a candle that
cannot be used (a zero, negative or non-finite price, an open time off the timeframe grid)
used to stop every later labelling pass. Now the labeller marks it with its reason and skips
it: ``quarantine_reason`` and ``quarantined_at`` on ``headlines`` and ``candles``, both
nullable. Every stored row keeps its values and starts unquarantined; the next labelling pass
quarantines the bad ones. The downgrade drops both columns (losing only the marks).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import services.common.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("headlines", "candles")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("quarantine_reason", sa.String(length=64), nullable=True))
            batch_op.add_column(
                sa.Column(
                    "quarantined_at", services.common.db.models.UTCDateTime(timezone=True), nullable=True
                )
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("quarantined_at")
            batch_op.drop_column("quarantine_reason")
