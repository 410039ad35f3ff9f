"""Labelled rows out: a time range as JSON lines, CSV or Parquet (the LabelledRowOut shape)."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Any, Literal

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.db.models import Candle, CandleGap, Headline, LabelledRow, SourceState
from services.common.errors import InvalidInput
from services.common.schemas import LabelledRowOut

RowFormat = Literal["jsonl", "csv", "parquet"]
MEDIA_TYPES: dict[str, str] = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}


def query_rows(
    session: Session,
    start: datetime | None = None,
    end: datetime | None = None,
    symbol: str | None = None,
    horizon: str | None = None,
    limit: int | None = None,
) -> list[LabelledRowOut]:
    """Rows with ``start <= headline_time < end``, oldest first."""
    if start and end and start >= end:
        raise InvalidInput("start must be before end", param="start")
    statement = select(LabelledRow, Headline.title).join(Headline, Headline.id == LabelledRow.headline_id)
    if start:
        statement = statement.where(LabelledRow.headline_time >= start)
    if end:
        statement = statement.where(LabelledRow.headline_time < end)
    if symbol:
        statement = statement.where(LabelledRow.symbol == symbol)
    if horizon:
        statement = statement.where(LabelledRow.horizon == horizon)
    statement = statement.order_by(LabelledRow.headline_time, LabelledRow.id)
    if limit:
        statement = statement.limit(limit)
    return [_out(row, title) for row, title in session.execute(statement)]


def _out(row: LabelledRow, title: str) -> LabelledRowOut:
    fields: dict[str, Any] = {
        name: getattr(row, name)
        for name in LabelledRowOut.model_fields
        if name not in {"headline", "return_"} and hasattr(row, name)
    }
    return LabelledRowOut(headline=title, **{"return": row.return_}, **fields)


def render_rows(rows: list[LabelledRowOut], fmt: RowFormat) -> bytes:
    dumped = [row.model_dump(mode="json", by_alias=True) for row in rows]
    if fmt == "jsonl":
        return "".join(json.dumps(item) + "\n" for item in dumped).encode()
    frame = pd.DataFrame(dumped, columns=list(_columns()))
    if fmt == "csv":
        frame["situation_candles"] = frame["situation_candles"].map(json.dumps)
        return frame.to_csv(index=False).encode()
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    raise InvalidInput(f"unknown format {fmt!r}: use jsonl, csv or parquet", param="format")


def _columns() -> list[str]:
    return [field.alias or name for name, field in LabelledRowOut.model_fields.items()]


def stats(session: Session) -> dict[str, Any]:
    """Counts an operator wants at a glance: headlines, candles, labels, gaps, sources."""
    labels = dict(session.execute(select(LabelledRow.label, func.count()).group_by(LabelledRow.label)).all())
    candles = session.execute(
        select(func.count(), func.min(Candle.open_time), func.max(Candle.open_time))
    ).one()
    headlines = session.execute(
        select(func.count(), func.min(Headline.published_at), func.max(Headline.published_at))
    ).one()
    sources = [
        {
            "source": state.source,
            "last_success_at": state.last_success_at,
            "last_error": state.last_error,
            "last_error_at": state.last_error_at,
        }
        for state in session.scalars(select(SourceState).order_by(SourceState.source))
    ]
    return {
        "headlines": {"count": headlines[0], "first": headlines[1], "last": headlines[2]},
        "candles": {"count": candles[0], "first": candles[1], "last": candles[2]},
        "labelled_rows": {"count": sum(labels.values()), "by_label": labels},
        "candle_gaps": session.scalar(select(func.count()).select_from(CandleGap)),
        "sources": sources,
    }
