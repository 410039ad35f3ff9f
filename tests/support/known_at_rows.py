"""Labelled rows as the labeller derives them from headlines of any time precision (issue 11).

A headline at ``moment`` known only to its ``precision`` in ``zone`` has headline_time = the
period's start there and known_at = its end; the row enters at the first hourly candle (on the
UTC hour) opening at or after known_at and exits at the close of the candle ending one horizon
later. The trainer's split tests use these rows as they are; the backtest's store them
(``store``: a headline and its labelled row, as the ingest service writes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from services.common.db.models import Headline, LabelledRow
from services.common.labelled_rows import split_time
from services.common.time_precision import Precision, known_at, period_start

HOUR = 3600


@dataclass(frozen=True)
class Row:
    id: int
    headline_time: datetime
    known_at: datetime
    entry_time: datetime
    exit_time: datetime
    precision: Precision

    @property
    def split(self) -> datetime:
        return split_time(self.headline_time, self.known_at)


def labelled(number: int, moment: datetime, precision: Precision, zone: str, horizon_hours: int = 1) -> Row:
    """Row ``number`` for a headline at ``moment``, known to ``precision`` in ``zone``."""
    tz = ZoneInfo(zone)
    start, known = period_start(moment, precision, tz), known_at(moment, precision, tz)
    entry = datetime.fromtimestamp(math.ceil(known.timestamp() / HOUR) * HOUR, UTC)
    return Row(number, start, known, entry, entry + timedelta(hours=horizon_hours), precision)


def store(session: Session, row: Row, entry_price: float, exit_price: float) -> Row:
    """``row`` written as a headline and its BTC/USD 1h row at these prices; its id the row's."""
    headline = Headline(
        source="test", guid=f"g{row.id}", title=f"Headline {row.id}", title_key=f"headline {row.id}",
        published_at=row.headline_time, payload_sha256="0" * 64, time_precision=row.precision.value,
        known_at=row.known_at,
    )  # fmt: skip
    session.add(headline)
    session.flush()
    stored = LabelledRow(
        headline_id=headline.id, exchange="test", symbol="BTC/USD", timeframe="1h", horizon="1h",
        headline_time=row.headline_time, known_at=row.known_at, entry_time=row.entry_time,
        exit_time=row.exit_time, entry_price=entry_price, exit_price=exit_price,
        return_=exit_price / entry_price - 1, label="Increase" if exit_price > entry_price else "Decrease",
        market_situation="Steady small increase after a steady small decrease", situation_candles=[],
    )  # fmt: skip
    session.add(stored)
    session.flush()
    return replace(row, id=stored.id)
