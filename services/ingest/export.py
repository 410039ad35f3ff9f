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
from services.common.labelled_rows import read_labelled_rows
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
    # An empty value (or a limit of 0) means "any", as the API's query parameters do.
    return read_labelled_rows(
        session, symbol or None, horizon or None, start=start or None, end=end or None, limit=limit or None
    )


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
