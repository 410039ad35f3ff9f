"""Migrations and models agree, on SQLite and PostgreSQL; times come back aware UTC."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from services.common.db import get_engine, session_scope
from services.common.db.migrate import alembic_config, upgrade
from services.common.db.models import Base, Candle


def test_migrations_match_models(db_url: str) -> None:
    with get_engine(db_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_is_idempotent(db_url: str) -> None:
    from sqlalchemy import text

    upgrade(db_url)
    upgrade(db_url)
    with get_engine(db_url).connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()] == ["0009"]


def test_times_round_trip_as_aware_utc(db_url: str) -> None:
    eastern = timezone(timedelta(hours=-4))
    with session_scope(db_url) as session:
        session.add(
            Candle(
                exchange="x",
                symbol="BTC/USD",
                timeframe="1h",
                open_time=datetime(2020, 7, 8, 10, tzinfo=eastern),
                open=1,
                high=2,
                low=0.5,
                close=1.5,
                volume=3,
            )
        )
    with session_scope(db_url) as session:
        candle = session.get(Candle, ("x", "BTC/USD", "1h", datetime(2020, 7, 8, 14, tzinfo=UTC)))
        assert candle is not None
        assert candle.open_time == datetime(2020, 7, 8, 14, tzinfo=UTC)
        assert candle.open_time.tzinfo is not None


def test_naive_datetimes_are_refused(db_url: str) -> None:
    with pytest.raises(Exception, match="naive datetime"), session_scope(db_url) as session:
        session.add(
            Candle(
                exchange="x",
                symbol="s",
                timeframe="1h",
                open_time=datetime(2020, 1, 1),
                open=1,
                high=1,
                low=1,
                close=1,
                volume=1,
            )
        )
        session.flush()
