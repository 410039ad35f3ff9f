"""The rows a backtest scores: labelled rows of one symbol, horizon and exchange in a window.

Read from the database the ingest service fills (``labelled_rows`` joined to ``headlines``),
as numpy arrays for the metrics and plain lists for the prompts. Rows labelled Flat (a
neutral band) are not Increase/Decrease questions: they are counted and left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.backtest.strategy import Windows
from services.common import labelling
from services.common.db import session_scope
from services.common.db.models import Candle, LabelledRow, candles_between
from services.common.errors import InvalidInput
from services.common.labelled_rows import BY_KNOWN, SECOND, labelled_row_filters, select_labelled_rows
from services.common.prompts import DECREASE, INCREASE


def timeframe_seconds(timeframe: str) -> int:
    """Seconds in a ccxt timeframe ("1h", "15m", "1d"), as the labeller counts them."""
    try:
        return labelling.timeframe_seconds(timeframe)
    except ValueError as exc:
        raise InvalidInput(str(exc), param="timeframe") from exc


def _epoch(times: list[datetime]) -> np.ndarray:
    return np.array([int(t.timestamp()) for t in times], dtype=np.int64)


@dataclass(frozen=True)
class EvalRows:
    row_id: np.ndarray
    headline: list[str]
    published_at: list[datetime]
    market_situation: list[str]
    headline_time: np.ndarray  # epoch seconds
    entry_time: np.ndarray
    exit_time: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    y_true: np.ndarray  # 1 = Increase, 0 = Decrease
    exchange: str
    symbol: str
    timeframe: str
    horizon: str
    flat_rows_left_out: int
    # Each row's time precision, for the prompt (empty: all "second", which reads as "minute").
    time_precision: list[str] = field(default_factory=list)
    # Epoch seconds when each headline counts as known (the end of its precision period).
    # Empty: every row is second-precision, known one second after its headline time.
    known_at: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.row_id.size)

    def known_times(self) -> np.ndarray:
        return self.known_at if self.known_at.size else self.headline_time + 1

    def split_times(self) -> np.ndarray:
        """Each row on the split axis (``labelled_rows.split_time``: known_at - 1 s), the time the
        trainer's windows and the leakage guard compare; a second-precision row's headline time."""
        return self.known_times() - 1

    def precisions(self) -> list[str]:
        return self.time_precision or ["second"] * len(self)

    def windows(self) -> Windows:
        return Windows.from_rows(self.entry_time, self.exit_time, self.entry_price, self.exit_price)

    @property
    def first_time(self) -> datetime:
        return self.published_at[0]

    @property
    def last_time(self) -> datetime:
        return self.published_at[-1]


def _choose_one(session, column, filters, wanted: str | None, what: str) -> str:  # type: ignore[no-untyped-def]
    present = sorted(session.scalars(select(column).where(*filters).distinct()).all())
    if wanted is not None:
        return wanted
    if len(present) > 1:
        raise InvalidInput(
            f"rows in this window were labelled on several {what}s ({', '.join(present)}); choose one"
        )
    return present[0] if present else ""


def load_rows(
    url: str,
    symbol: str,
    horizon: str,
    start: datetime | None = None,
    end: datetime | None = None,
    exchange: str | None = None,
) -> EvalRows:
    """Labelled rows with start <= split time < end (known_at - 1 s: rows known by ``end`` and
    not at ``start``, as the trainer's windows hold them), oldest first; InvalidInput if none."""
    filters = labelled_row_filters(symbol, horizon, start=start, end=end, on="known")
    with session_scope(url) as session:
        exchange = _choose_one(session, LabelledRow.exchange, filters, exchange, "exchange")
        query = select_labelled_rows(symbol, horizon, exchange=exchange, start=start, end=end, on="known")
        records = session.execute(query).all()
        if not records:
            raise InvalidInput(_empty_message(session, symbol, horizon, start, end), param="start")
    rows = [row for row, _ in records if row.label in (INCREASE, DECREASE)]
    titles = [title for row, title in records if row.label in (INCREASE, DECREASE)]
    if not rows:
        raise InvalidInput(f"all {len(records)} rows in the window are labelled Flat: nothing to score")
    return EvalRows(
        row_id=np.array([row.id for row in rows], dtype=np.int64),
        headline=titles,
        published_at=[row.headline_time for row in rows],
        market_situation=[row.market_situation for row in rows],
        time_precision=[row.time_precision for row in rows],
        headline_time=_epoch([row.headline_time for row in rows]),
        entry_time=_epoch([row.entry_time for row in rows]),
        exit_time=_epoch([row.exit_time for row in rows]),
        known_at=_epoch([row.known_at for row in rows]),
        entry_price=np.array([row.entry_price for row in rows], dtype=float),
        exit_price=np.array([row.exit_price for row in rows], dtype=float),
        y_true=np.array([row.label == INCREASE for row in rows], dtype=np.int8),
        exchange=exchange,
        symbol=symbol,
        timeframe=rows[0].timeframe,
        horizon=horizon,
        flat_rows_left_out=len(records) - len(rows),
    )


def _empty_message(
    session: Session, symbol: str, horizon: str, start: datetime | None, end: datetime | None
) -> str:
    """Why a window is empty, on the axis it was read on: the split time (known_at - 1 s), so a
    row dated only to a day whose headline time is inside the window but known after it (a row
    that is rightly not there) is not reported as if it were."""
    first, last, count = session.execute(
        select(func.min(LabelledRow.known_at), func.max(LabelledRow.known_at), func.count()).where(
            LabelledRow.symbol == symbol, LabelledRow.horizon == horizon
        )
    ).one()
    window = f"between {start.isoformat() if start else 'the start'} and {end.isoformat() if end else 'now'}"
    if not count:
        return f"no labelled rows for {symbol} {horizon} at all: run `hsig ingest` and label headlines first"
    stored = f"the {count} stored row runs" if count == 1 else f"the {count} stored rows run"
    return (
        f"no labelled rows for {symbol} {horizon} {window} {BY_KNOWN}; {stored} from {(first - SECOND).isoformat()} to "
        f"{(last - SECOND).isoformat()} on that time"
    )


def increase_share_before(url: str, rows: EvalRows, before: datetime) -> tuple[float, int]:
    """Share of Increase among rows whose outcome was known before ``before`` (exit <= before)."""
    with session_scope(url) as session:
        labels = session.scalars(
            select(LabelledRow.label).where(
                *labelled_row_filters(rows.symbol, rows.horizon, exchange=rows.exchange, exited_by=before),
                LabelledRow.label.in_((INCREASE, DECREASE)),
            )
        ).all()
    if not labels:
        return (float("nan"), 0)
    return (sum(label == INCREASE for label in labels) / len(labels), len(labels))


def previous_closed_moves(url: str, rows: EvalRows, lookback: timedelta = timedelta(days=3)) -> np.ndarray:
    """close - open of the last candle that had closed by each headline's known_at (NaN if none).

    A candle stamped t (its open time) closes at t + timeframe; only candles with
    t + timeframe <= known_at count: the moment the row is predicted from, the one its market
    situation is read at (services.common.labelling), so the move was known by then. A day-dated
    headline is known at the day's end, not at its first midnight.
    """
    step = timeframe_seconds(rows.timeframe)
    known = rows.known_times()
    since = datetime.fromtimestamp(int(known.min()), UTC) - lookback
    until = datetime.fromtimestamp(int(known.max()), UTC)
    with session_scope(url) as session:
        query = candles_between(
            rows.exchange,
            rows.symbol,
            rows.timeframe,
            since,
            until,
            Candle.open_time,
            Candle.open,
            Candle.close,
        )
        candles = session.execute(query).all()
    moves = np.full(len(rows), np.nan)
    if not candles:
        return moves
    close_time = _epoch([c.open_time for c in candles]) + step
    move = np.array([c.close - c.open for c in candles], dtype=float)
    last_closed = np.searchsorted(close_time, known, side="right") - 1
    found = last_closed >= 0
    moves[found] = move[last_closed[found]]
    return moves
