"""labelled_rows indexed for the reads by known_at: ``(symbol, horizon, known_at)``

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 01:20:00

The trainer's windows, the backtest's rows, the walk-forward's folds and the scheduled rolling
window read labelled rows by their split time (``services.common.labelled_rows``, ``on="known"``:
``symbol = ? AND horizon = ? AND start + 1 s <= known_at < end + 1 s``), and the schedule asks
for ``max(known_at)`` of a symbol and horizon. The only time index, ``ix_labelled_rows_time``
(``symbol, horizon, headline_time``), serves the ingest export's reads by headline time, not
these: PostgreSQL and SQLite read every row of the symbol and horizon through it and filtered
them on known_at (``tests/ingest/test_migration_0009.py`` checks the plans). The two equality
columns come first and the range column last, so a window is one contiguous range of the index
and ``max(known_at)`` its last entry; ``exchange`` is left out because a window is first read
without it (to find the exchanges present) and would then no longer be one range.

A new index: no stored row changes. ``IF NOT EXISTS`` / ``IF EXISTS`` make the upgrade and the
downgrade safe to run again on a database that already has (or lacks) it. On PostgreSQL the
build takes a SHARE lock on ``labelled_rows`` (reads go on, writes wait) for as long as it
lasts; the migration runs in one transaction, so ``CONCURRENTLY`` is not available.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NAME = "ix_labelled_rows_known_at"
COLUMNS = ["symbol", "horizon", "known_at"]


def upgrade() -> None:
    op.create_index(NAME, "labelled_rows", COLUMNS, unique=False, if_not_exists=True)


def downgrade() -> None:
    op.drop_index(NAME, table_name="labelled_rows", if_exists=True)
