"""Idempotent writes on both databases, including PostgreSQL's COPY path for large batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.db.models import Headline, LabelledRow
from services.ingest.headlines import HeadlineRecord
from services.ingest.store import COPY_THRESHOLD, insert_headlines, insert_labelled_rows

BASE = datetime(2020, 1, 1, tzinfo=UTC)


def _rows(ids: list[int]) -> list[dict]:
    return [
        {
            "headline_id": headline_id,
            "exchange": "coinbaseexchange",
            "symbol": "BTC/USD",
            "timeframe": "1h",
            "horizon": "1h",
            "headline_time": BASE + timedelta(minutes=i),
            "entry_time": BASE + timedelta(hours=1),
            "exit_time": BASE + timedelta(hours=2),
            "entry_price": 100.0,
            "exit_price": 100.0 + i,
            "return": i / 100,
            "label": "Increase" if i else "Decrease",
            "market_situation": f"situation {i}",
            "situation_candles": [(BASE - timedelta(hours=1)).isoformat()],
            "labelled_at": BASE,
        }
        for i, headline_id in enumerate(ids)
    ]


def test_large_batches_are_idempotent_and_round_trip(db_url: str) -> None:
    count = COPY_THRESHOLD + 500  # above the threshold: COPY on PostgreSQL, INSERT on SQLite
    records = [HeadlineRecord("s", str(i), f"story {i}", BASE + timedelta(minutes=i)) for i in range(count)]
    with session_scope(db_url) as session:
        assert insert_headlines(session, records) == count
    with session_scope(db_url) as session:
        assert insert_headlines(session, records) == 0
        ids = session.scalars(select(Headline.id).order_by(Headline.published_at)).all()
    rows = _rows(list(ids))
    with session_scope(db_url) as session:
        assert insert_labelled_rows(session, rows[:100]) == 100
    with session_scope(db_url) as session:
        assert insert_labelled_rows(session, rows) == count - 100  # the first 100 are kept as they were
    with session_scope(db_url) as session:
        assert insert_labelled_rows(session, rows) == 0
        assert session.scalar(select(func.count()).select_from(LabelledRow)) == count
        stored = session.scalars(
            select(LabelledRow).where(LabelledRow.market_situation == "situation 2100")
        ).one()
    assert stored.return_ == 21.0 and stored.exit_price == 2200.0
    assert stored.situation_candles == [(BASE - timedelta(hours=1)).isoformat()]
    assert stored.headline_time == BASE + timedelta(minutes=2100)


def test_a_failed_batch_stores_nothing(db_url: str) -> None:
    broken = [
        HeadlineRecord("s", "1", "fine", BASE),
        HeadlineRecord("s", "2", "also fine", BASE + timedelta(minutes=1)),
        HeadlineRecord("s", "3", "naive time", datetime(2020, 1, 1)),
    ]
    with pytest.raises(Exception, match="naive datetime"), session_scope(db_url) as session:
        insert_headlines(session, broken)
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Headline)) == 0
