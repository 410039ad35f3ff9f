"""The one query for labelled rows, as the ingest export, the trainer and the backtest read them.

Rows come joined to their headline's title, oldest first (headline time, then id, so equal times
keep one order on any database). Time bounds are ``start <= t < end`` on the headline time (the
ingest export: what the source said) or, with ``on="known"``, on the row's split time
(``split_time``: ``known_at - 1 s``, when a prediction could be made; the trainer's windows, the
backtest's and the walk-forward's). ``exited_by`` keeps only rows whose outcome was known by then
(``exit_time <= exited_by``): what a baseline may learn from without looking ahead.
Each filter left at None is not applied; callers that treat an empty string as "any" pass
``value or None``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from services.common.db.models import Headline, LabelledRow
from services.common.schemas import LabelledRowOut

SECOND = timedelta(seconds=1)
# Which time puts a row in a window, for every "no rows in this window" message.
BY_KNOWN = "by when they became known (known_at - 1 s, not the headline time)"
WindowOn = Literal["headline", "known"]


def split_time(headline_time: datetime, known_at: datetime | None) -> datetime:
    """The time every split, fold, embargo and leakage check places a labelled row at: the last
    second of its headline's precision period, ``known_at - 1 s``.

    A row exists for a model only once its headline is known, so a window ``[start, end)`` holds
    the rows known by its end and not at its start (``start < known_at <= end``). A day-dated row
    (headline_time the day's first midnight in its zone, known_at the next) so counts in the
    window holding the day's last second, never in one that ends before it is known. For a
    second-precision row (known_at = its second + 1 s) this is its headline time, as before
    known_at existed; a row without a known_at (a file exported before migration 0006) is one.
    """
    if known_at is None:
        return headline_time.replace(microsecond=0)
    return known_at - SECOND


def labelled_row_filters(
    symbol: str | None = None,
    horizon: str | None = None,
    *,
    exchange: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    exited_by: datetime | None = None,
    on: WindowOn = "headline",
) -> list[ColumnElement[bool]]:
    """The WHERE conditions of ``select_labelled_rows``, for callers that ask more of the same rows.

    ``on="known"``: ``start <= known_at - 1 s < end`` (``split_time``), written on the stored
    column as ``start + 1 s <= known_at < end + 1 s``."""
    filters: list[ColumnElement[bool]] = []
    if symbol is not None:
        filters.append(LabelledRow.symbol == symbol)
    if horizon is not None:
        filters.append(LabelledRow.horizon == horizon)
    if exchange is not None:
        filters.append(LabelledRow.exchange == exchange)
    column, shift = (
        (LabelledRow.known_at, SECOND) if on == "known" else (LabelledRow.headline_time, timedelta(0))
    )
    if start is not None:
        filters.append(column >= start + shift)
    if end is not None:
        filters.append(column < end + shift)
    if exited_by is not None:
        filters.append(LabelledRow.exit_time <= exited_by)
    return filters


def select_labelled_rows(
    symbol: str | None = None,
    horizon: str | None = None,
    *,
    exchange: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
    on: WindowOn = "headline",
) -> Select[tuple[LabelledRow, str]]:
    """SELECT (LabelledRow, headline title) with ``start <= t < end`` (t: headline time, or the
    split time with ``on="known"``), oldest first."""
    statement = (
        select(LabelledRow, Headline.title)
        .join(Headline, Headline.id == LabelledRow.headline_id)
        .where(*labelled_row_filters(symbol, horizon, exchange=exchange, start=start, end=end, on=on))
        .order_by(LabelledRow.headline_time, LabelledRow.id)
    )
    return statement.limit(limit) if limit is not None else statement


def row_out(row: LabelledRow, title: str) -> LabelledRowOut:
    """A row as the API exports it and the trainer reads it (LabelledRowOut)."""
    fields: dict[str, Any] = {
        name: getattr(row, name)
        for name in LabelledRowOut.model_fields
        if name not in {"headline", "return_"} and hasattr(row, name)
    }
    return LabelledRowOut.model_validate({**fields, "headline": title, "return": row.return_})


def read_labelled_rows(
    session: Session,
    symbol: str | None = None,
    horizon: str | None = None,
    *,
    exchange: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
    on: WindowOn = "headline",
) -> list[LabelledRowOut]:
    """``select_labelled_rows``'s rows as LabelledRowOut."""
    statement = select_labelled_rows(
        symbol, horizon, exchange=exchange, start=start, end=end, limit=limit, on=on
    )
    return [row_out(row, title) for row, title in session.execute(statement)]
