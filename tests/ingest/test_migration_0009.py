"""Migration 0009 (labelled_rows indexed on symbol, horizon, known_at), on SQLite and PostgreSQL:
at head the index is there and the windows' read by split time uses it; the downgrade to 0008
drops it; the upgrade over a database that has it already (the version stamped 0008) and the
downgrade over one that lacks it (stamped 0009) both go through (IF NOT EXISTS / IF EXISTS)."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Connection, inspect

from services.common.db import get_engine
from services.common.db.migrate import alembic_config, upgrade
from services.common.labelled_rows import select_labelled_rows

NAME = "ix_labelled_rows_known_at"
COLUMNS = ["symbol", "horizon", "known_at"]


def _indexes(db_url: str) -> dict[str, list[str]]:
    found = inspect(get_engine(db_url)).get_indexes("labelled_rows")
    return {index["name"]: list(index["column_names"]) for index in found if index["name"]}


# PostgreSQL plans by its statistics: a month's read out of 20,000 hourly rows, analysed.
ROWS_FOR_THE_PLANNER = """
INSERT INTO headlines (source, guid, title, title_key, published_at, payload_sha256, first_seen_at,
                       time_precision, known_at)
SELECT 'plan', 'g' || i, 't', 't' || i, at, repeat('0', 64), at, 'minute', at + interval '1 minute'
FROM generate_series(1, 20000) AS i, LATERAL (SELECT timestamptz '2023-01-01' + i * interval '1 hour' AS at) t;
INSERT INTO labelled_rows (headline_id, exchange, symbol, timeframe, horizon, headline_time, entry_time,
                           exit_time, entry_price, exit_price, "return", label, market_situation,
                           situation_candles, labelled_at, known_at)
SELECT id, 'x', 'BTC/USD', '1h', '1h', published_at, published_at + interval '1 hour',
       published_at + interval '2 hours', 1, 1, 0, 'Increase', '', '[]', published_at, known_at
FROM headlines WHERE source = 'plan';
ANALYZE headlines;
ANALYZE labelled_rows;
"""


def _plan(connection: Connection) -> str:
    """The database's plan for the windows' read (``on="known"``), as text."""
    statement = select_labelled_rows(
        "BTC/USD",
        "1h",
        start=datetime(2024, 1, 1, tzinfo=UTC),
        end=datetime(2024, 2, 1, tzinfo=UTC),
        on="known",
    )
    compiled = statement.compile(dialect=connection.dialect)
    if connection.dialect.name == "sqlite":
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
        lines = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
        return "\n".join(str(line[-1]) for line in lines)
    connection.exec_driver_sql(ROWS_FOR_THE_PLANNER)  # rolled back with the caller's transaction
    return "\n".join(line[0] for line in connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))


def _range_read_by_the_index(plan: str) -> bool:
    """Both bounds on known_at are conditions of the index scan, not a filter after it."""
    if plan.startswith("SEARCH"):  # SQLite
        return f"{NAME} (symbol=? AND horizon=? AND known_at>? AND known_at<?)" in plan
    lines = plan.splitlines()
    at = next((number for number, line in enumerate(lines) if NAME in line), None)
    condition = lines[at + 1] if at is not None and at + 1 < len(lines) else ""
    return "Index Cond" in condition and "known_at >=" in condition and "known_at <" in condition


def test_the_known_at_index_is_created_used_and_dropped(db_url: str) -> None:
    assert _indexes(db_url)[NAME] == COLUMNS
    with get_engine(db_url).connect() as connection:
        plan = _plan(connection)
        connection.rollback()
    assert _range_read_by_the_index(plan), plan
    config = alembic_config(db_url)
    command.downgrade(config, "0008")
    try:
        assert NAME not in _indexes(db_url)
        assert "ix_labelled_rows_time" in _indexes(db_url)  # the export's index stays
        upgrade(db_url)
        command.stamp(config, "0008")  # the index there, the version not: the upgrade keeps it
        upgrade(db_url)
        assert _indexes(db_url)[NAME] == COLUMNS
        command.downgrade(config, "0008")
        command.stamp(config, "0009")  # the version there, the index not: the downgrade goes through
        command.downgrade(config, "0008")
        assert NAME not in _indexes(db_url)
    finally:  # back at head with the index, whichever step failed
        command.downgrade(config, "0008")
        upgrade(db_url)
    assert _indexes(db_url)[NAME] == COLUMNS
