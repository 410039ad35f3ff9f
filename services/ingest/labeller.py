"""Label what is newly labellable: headlines without a row for this market and horizon, whose
entry and exit candles are now stored. Runs every cycle; idempotent (ON CONFLICT DO NOTHING).

Labels are derived from each headline's ``known_at`` (the end of its time's precision period,
``services.common.time_precision``), not its ``published_at``: a headline known only to the
day enters at the first candle opening at or after the day's end in its zone, and its market
situation is the candles closed by then. The row stores that ``known_at``.

Quarantine, not poison: a headline whose time cannot be labelled (no zone, before
``HSIG_EARLIEST_TIME``, after now + ``HSIG_FUTURE_SKEW_SECONDS``) and a stored candle that
cannot be used (``labelling.candle_faults``) are marked with their reason, in the same
transaction, and skipped; everything else is labelled. A quarantined candle reads as missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from services.common.db.models import Candle, Headline, LabelledRow, candles_between
from services.common.labelling import (
    Candles,
    Labels,
    SituationWords,
    candle_faults,
    label_headlines,
    label_names,
    situation_texts,
    timeframe_seconds,
)
from services.ingest.headlines import EARLIEST_TIME, time_fault
from services.ingest.headlines import ItemLimits as _Limits
from services.ingest.store import insert_labelled_rows, quarantine_candles, quarantine_headlines

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
    quarantined_headlines: dict[str, int] = field(default_factory=dict)  # reason -> count, this pass
    quarantined_candles: dict[str, int] = field(default_factory=dict)


def _tally(reasons: dict[Any, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in reasons.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _stamp(seconds: int | np.integer) -> datetime:
    return datetime.fromtimestamp(int(seconds), tz=UTC)


def _epoch(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp())


Pending = list[tuple[int, datetime, datetime]]  # headline id, published_at, known_at


def _unlabelled(session: Session, market: Market, horizon: str) -> Pending:
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
        select(Headline.id, Headline.published_at, Headline.known_at)
        .where(~already.exists(), Headline.quarantine_reason.is_(None))
        .order_by(Headline.published_at)
    )
    return [(row[0], row[1], row[2]) for row in session.execute(statement)]


def load_candles(
    session: Session,
    market: Market,
    start: datetime,
    end: datetime,
    quarantined: dict[datetime, str] | None = None,
) -> Candles:
    """The usable candles in [start, end]. One that cannot be used (``candle_faults``) is left
    out and, when ``quarantined`` is given, put there (open time -> reason) to be marked."""
    tf = timeframe_seconds(market.timeframe)
    columns = (Candle.open_time, Candle.open, Candle.high, Candle.low, Candle.close)
    statement = candles_between(market.exchange, market.symbol, market.timeframe, start, end, *columns)
    rows = session.execute(statement).all()
    times = np.array([_epoch(row[0]) for row in rows], dtype=np.int64)
    prices = [
        np.array([np.nan if row[i] is None else row[i] for row in rows], dtype=np.float64)
        for i in range(1, 5)
    ]
    faults = candle_faults(times, *prices, tf)
    bad = faults != None  # noqa: E711 (elementwise on an object array)
    if quarantined is not None:
        quarantined.update({rows[i][0]: str(faults[i]) for i in np.flatnonzero(bad).tolist()})
    keep = ~bad
    return Candles(times[keep], *(column[keep] for column in prices), tf)


def _time_faults(pending: Pending, now: datetime, earliest: datetime, skew: timedelta) -> dict[int, str]:
    limits = _Limits(earliest=earliest, future_skew=skew)
    faults: dict[int, str] = {}
    for headline_id, published, _ in pending:
        fault = time_fault(published, now, limits)
        if fault:
            faults[headline_id] = fault
    return faults


def label_new_rows(
    session: Session,
    market: Market,
    horizon: str,
    neutral_band: float = 0.0,
    lookback: int = 2,
    words: SituationWords | None = None,
    earliest: datetime = EARLIEST_TIME,
    future_skew: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
) -> LabelOutcome:
    """Label every headline that has no row yet and whose candles are stored; returns counts.

    Headlines with an implausible time and candles that cannot be used are quarantined (in
    this transaction) and skipped: one bad row never stops the pass.
    """
    pending = _unlabelled(session, market, horizon)
    outcome = LabelOutcome(considered=len(pending))
    if not pending:
        return outcome
    bad_headlines = _time_faults(pending, now or datetime.now(UTC), earliest, future_skew)
    pending = [item for item in pending if item[0] not in bad_headlines]
    bad_candles: dict[datetime, str] = {}
    if pending:
        tf, horizon_seconds = timeframe_seconds(market.timeframe), timeframe_seconds(horizon)
        # The labelling contract reads when each headline is known, not when its period began.
        times = np.array([_epoch(known) for _, _, known in pending], dtype=np.int64)
        first = datetime.fromtimestamp(int(times.min()) - (lookback + 1) * tf, tz=UTC)
        last = datetime.fromtimestamp(int(times.max()) + horizon_seconds + tf, tz=UTC)
        candles = load_candles(session, market, first, last, bad_candles)
        labels = label_headlines(
            times, candles, horizon_seconds, neutral_band, lookback, words or SituationWords()
        )
        rows, unlabellable = _rows(pending, market, horizon, candles, labels)
        bad_headlines.update(unlabellable)
        outcome.labelled = insert_labelled_rows(session, rows)
        outcome.waiting = int((~labels.labelled).sum())
        for row in rows:
            outcome.by_label[row["label"]] = outcome.by_label.get(row["label"], 0) + 1
    if bad_headlines:
        quarantine_headlines(session, bad_headlines)
    if bad_candles:
        quarantine_candles(session, market.exchange, market.symbol, market.timeframe, bad_candles)
    outcome.quarantined_headlines = _tally(bad_headlines)
    outcome.quarantined_candles = _tally(bad_candles)
    return outcome


def _rows(
    pending: Pending, market: Market, horizon: str, candles: Candles, labels: Labels
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """One insertable dict per labelled headline (the table's column names), and the headlines
    whose label came out non-finite (never stored: a last guard, the candles were checked)."""
    tf = candles.timeframe_seconds
    names = label_names(labels.label)
    texts = situation_texts(labels.situation_code)
    now = datetime.now(UTC)
    rows = []
    unlabellable: dict[int, str] = {}
    finite = np.isfinite(labels.entry_price) & np.isfinite(labels.exit_price) & np.isfinite(labels.return_)
    for position in np.flatnonzero(labels.labelled).tolist():
        headline_id, published_at, known_at = pending[position]
        if not finite[position]:
            unlabellable[headline_id] = "bad_return"
            continue
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
                "known_at": known_at,
            }
        )
    return rows, unlabellable
