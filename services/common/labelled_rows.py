"""The one query for labelled rows, as the ingest export, the trainer and the backtest read them.

Rows come joined to their headline's title, oldest first (headline time, then id, so equal times
keep one order on any database). Time bounds are on the headline time, ``start <= t < end``:
the time a prediction would have been made. ``exited_by`` keeps only rows whose outcome was known
by then (``exit_time <= exited_by``): what a baseline may learn from without looking ahead.
Each filter left at None is not applied; callers that treat an empty string as "any" pass
``value or None``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from services.common.db.models import Headline, LabelledRow
from services.common.schemas import LabelledRowOut


def labelled_row_filters(
    symbol: str | None = None,
    horizon: str | None = None,
    *,
    exchange: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    exited_by: datetime | None = None,
) -> list[ColumnElement[bool]]:
    """The WHERE conditions of ``select_labelled_rows``, for callers that ask more of the same rows."""
    filters: list[ColumnElement[bool]] = []
    if symbol is not None:
        filters.append(LabelledRow.symbol == symbol)
    if horizon is not None:
        filters.append(LabelledRow.horizon == horizon)
    if exchange is not None:
        filters.append(LabelledRow.exchange == exchange)
    if start is not None:
        filters.append(LabelledRow.headline_time >= start)
    if end is not None:
        filters.append(LabelledRow.headline_time < end)
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
) -> Select[tuple[LabelledRow, str]]:
    """SELECT (LabelledRow, headline title) with ``start <= headline_time < end``, oldest first."""
    statement = (
        select(LabelledRow, Headline.title)
        .join(Headline, Headline.id == LabelledRow.headline_id)
        .where(*labelled_row_filters(symbol, horizon, exchange=exchange, start=start, end=end))
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
) -> list[LabelledRowOut]:
    """``select_labelled_rows``'s rows as LabelledRowOut."""
    statement = select_labelled_rows(symbol, horizon, exchange=exchange, start=start, end=end, limit=limit)
    return [row_out(row, title) for row, title in session.execute(statement)]
