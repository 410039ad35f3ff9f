"""Label what is newly labellable: headlines without a row for this market and horizon, whose
entry and exit candles are now stored. Runs every cycle; idempotent (ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from services.common.db.models import Candle, Headline, LabelledRow, candles_between
from services.common.labelling import (
    Candles,
    Labels,
    SituationWords,
    label_headlines,
    label_names,
    situation_texts,
    timeframe_seconds,
)
from services.ingest.store import insert_labelled_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Market:
    exchange: str
    symbol: str
    timeframe: str


@dataclass
class LabelOutcome:
    considered: int = 0
    labelled: int = 0
    by_label: dict[str, int] = field(default_factory=dict)
    waiting: int = 0  # no entry or exit candle stored yet (or ever, inside a gap)


def _stamp(seconds: int | np.integer) -> datetime:
    return datetime.fromtimestamp(int(seconds), tz=UTC)


def _epoch(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp())


def _unlabelled(session: Session, market: Market, horizon: str) -> list[tuple[int, datetime]]:
    already = select(LabelledRow.id).where(
        and_(
            LabelledRow.headline_id == Headline.id,
            LabelledRow.exchange == market.exchange,
            LabelledRow.symbol == market.symbol,
            LabelledRow.timeframe == market.timeframe,
            LabelledRow.horizon == horizon,
        )
    )
    statement = (
        select(Headline.id, Headline.published_at).where(~already.exists()).order_by(Headline.published_at)
    )
    return [(row[0], row[1]) for row in session.execute(statement)]


def load_candles(session: Session, market: Market, start: datetime, end: datetime) -> Candles:
    columns = (Candle.open_time, Candle.open, Candle.high, Candle.low, Candle.close)
    statement = candles_between(market.exchange, market.symbol, market.timeframe, start, end, *columns)
    rows = session.execute(statement).all()
    times = np.array([_epoch(row[0]) for row in rows], dtype=np.int64)
    columns = [np.array([row[i] for row in rows], dtype=np.float64) for i in range(1, 5)]
    return Candles(times, *columns, timeframe_seconds(market.timeframe))


def label_new_rows(
    session: Session,
    market: Market,
    horizon: str,
    neutral_band: float = 0.0,
    lookback: int = 2,
    words: SituationWords | None = None,
) -> LabelOutcome:
    """Label every headline that has no row yet and whose candles are stored; returns counts."""
    pending = _unlabelled(session, market, horizon)
    outcome = LabelOutcome(considered=len(pending))
    if not pending:
        return outcome
    tf, horizon_seconds = timeframe_seconds(market.timeframe), timeframe_seconds(horizon)
    times = np.array([_epoch(published) for _, published in pending], dtype=np.int64)
    first = datetime.fromtimestamp(int(times.min()) - (lookback + 1) * tf, tz=UTC)
    last = datetime.fromtimestamp(int(times.max()) + horizon_seconds + tf, tz=UTC)
    candles = load_candles(session, market, first, last)
    labels = label_headlines(
        times, candles, horizon_seconds, neutral_band, lookback, words or SituationWords()
    )
    rows = _rows(pending, market, horizon, candles, labels)
    outcome.labelled = insert_labelled_rows(session, rows)
    outcome.waiting = int((~labels.labelled).sum())
    for name in label_names(labels.label[labels.labelled]).tolist():
        outcome.by_label[name] = outcome.by_label.get(name, 0) + 1
    return outcome


def _rows(
    pending: list[tuple[int, datetime]], market: Market, horizon: str, candles: Candles, labels: Labels
) -> list[dict[str, Any]]:
    """One insertable dict per labelled headline (the table's column names)."""
    tf = candles.timeframe_seconds
    names = label_names(labels.label)
    texts = situation_texts(labels.situation_code)
    now = datetime.now(UTC)
    rows = []
    for position in np.flatnonzero(labels.labelled).tolist():
        headline_id, published_at = pending[position]
        used = labels.situation_idx[position]
        rows.append(
            {
                "headline_id": headline_id,
                "exchange": market.exchange,
                "symbol": market.symbol,
                "timeframe": market.timeframe,
                "horizon": horizon,
                "headline_time": published_at,
                "entry_time": _stamp(candles.open_time[labels.entry_idx[position]]),
                "exit_time": _stamp(candles.open_time[labels.exit_idx[position]] + tf),
                "entry_price": float(labels.entry_price[position]),
                "exit_price": float(labels.exit_price[position]),
                "return": float(labels.return_[position]),
                "label": names[position],
                "market_situation": texts[position],
                "situation_candles": [
                    _stamp(candles.open_time[i]).isoformat() for i in used.tolist() if i >= 0
                ],
                "labelled_at": now,
            }
        )
    return rows
