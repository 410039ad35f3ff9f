"""Migration 0005 (quarantine) keeps every stored headline and candle, on SQLite and
PostgreSQL: rows written by the 0004 schema come back unquarantined, the next labelling pass
quarantines the bad ones (a year-0001 headline, a zero-price candle) and labels the rest; the
downgrade drops only the marks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import column, inspect, select, table

from services.common.db import get_engine, session_scope
from services.common.db.migrate import alembic_config, upgrade
from services.common.db.models import Candle, Headline, LabelledRow
from services.ingest.cycle import run_cycle
from services.ingest.settings import IngestSettings
from tests.conftest import stored_at

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NEW_COLUMNS = {"quarantine_reason", "quarantined_at"}
LATER_COLUMNS = {"time_precision", "known_at"}  # 0006: not in the 0004 schema either


def _columns(db_url: str, table: str) -> set[str]:
    return {column["name"] for column in inspect(get_engine(db_url)).get_columns(table)}


def _headline(title: str, published: datetime) -> dict[str, object]:
    return {
        "source": "old",
        "guid": title,
        "title": title,
        "title_key": title,
        "published_at": published,
        "payload_sha256": "0" * 64,
        "first_seen_at": T0,
    }


def _candle(hour: int, price: float) -> dict[str, object]:
    return {
        "exchange": "coinbaseexchange",
        "symbol": "BTC/USD",
        "timeframe": "1h",
        "open_time": T0 + timedelta(hours=hour),
        "open": price,
        "high": price * 1.01,
        "low": price * 0.99,
        "close": price,
        "volume": 1.0,
    }


def test_rows_stored_before_0005_are_kept_then_quarantined_or_labelled(
    db_url: str, ingest_settings: IngestSettings
) -> None:
    headlines, candles = Headline.__table__, Candle.__table__
    old_headline_columns = [c for c in headlines.c if c.name not in NEW_COLUMNS | LATER_COLUMNS]
    old_headlines = table("headlines", *(column(c.name, c.type) for c in old_headline_columns))
    with stored_at(db_url, "0004") as connection:
        assert not NEW_COLUMNS & _columns(db_url, "headlines")
        connection.execute(
            old_headlines.insert(),
            [
                _headline("year one", datetime(1, 1, 1, tzinfo=UTC)),
                _headline("good", T0 + timedelta(minutes=30)),
                _headline("enters at a zero candle", T0 + timedelta(hours=2, minutes=30)),
            ],
        )
        connection.execute(candles.insert(), [_candle(h, 0.0 if h == 3 else 100.0 + h) for h in range(5)])
    assert _columns(db_url, "headlines") >= NEW_COLUMNS and _columns(db_url, "candles") >= NEW_COLUMNS
    with session_scope(db_url) as session:
        kept = session.execute(select(*old_headline_columns).order_by(Headline.guid)).all()
        assert [row.title for row in kept] == ["enters at a zero candle", "good", "year one"]
        assert session.scalars(select(Headline.quarantine_reason)).all() == [None] * 3
        assert len(session.scalars(select(Candle)).all()) == 5

    settings = ingest_settings.model_copy(update={"exchange": "coinbaseexchange", "symbol": "BTC/USD"})
    outcome = run_cycle(settings, feeds=False, candles=False).sources[0]
    assert outcome.ok and outcome.stored == 1, outcome  # failed with "year 0 is out of range" before
    with session_scope(db_url) as session:
        marks = dict(session.execute(select(Headline.title, Headline.quarantine_reason)).all())
        assert marks == {"year one": "early_pubdate", "good": None, "enters at a zero candle": None}
        assert session.scalars(select(Candle.quarantine_reason).where(Candle.open == 0)).all() == [
            "bad_price"
        ]
        assert len(session.scalars(select(LabelledRow)).all()) == 1

    command.downgrade(alembic_config(db_url), "0004")
    try:
        assert not NEW_COLUMNS & _columns(db_url, "candles")
        with get_engine(db_url).connect() as connection:
            assert len(connection.execute(select(*old_headline_columns)).all()) == 3
    finally:
        upgrade(db_url)
