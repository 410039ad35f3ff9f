"""The ingest HTTP API: run a cycle, export labelled rows, stats. Thin: logic lives elsewhere."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime

from services.common.auth import Authorized
from services.common.db import session_scope
from services.common.errors import Conflict, InvalidInput
from services.common.redact import redact_text
from services.ingest.cycle import run_cycle
from services.ingest.export import MEDIA_TYPES, query_rows, render_rows, stats
from services.ingest.settings import IngestSettings
from services.ingest.store import quarantine_counts

router = APIRouter(prefix="/v1", tags=["ingest"])
_ACCEPT_FORMATS = {
    "application/x-ndjson": "jsonl",
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
}
MAX_ROWS = 1_000_000


def _settings(request: Request) -> IngestSettings:
    return request.app.state.settings


@router.post("/ingest/run", dependencies=[Authorized])
async def run_now(
    request: Request,
    feeds: bool = True,
    candles: bool = True,
    label: bool = True,
) -> dict[str, Any]:
    """One cycle now (feeds, candles, labelling); answers with what each source did."""
    lock: asyncio.Lock = request.app.state.cycle_lock
    if lock.locked():
        raise Conflict("a cycle is already running; try again when it ends")
    async with lock:
        report = await asyncio.to_thread(run_cycle, _settings(request), None, feeds, candles, label)
    return report.summary()


def _format(fmt: str | None, accept: str | None) -> str:
    if fmt:
        if fmt not in MEDIA_TYPES:
            raise InvalidInput(f"unknown format {fmt!r}: use jsonl, csv or parquet", param="format")
        return fmt
    for media_type, name in _ACCEPT_FORMATS.items():
        if accept and media_type in accept:
            return name
    return "jsonl"


@router.get("/rows")
def rows(
    request: Request,
    start: Annotated[AwareDatetime | None, Query(description="First headline time (inclusive).")] = None,
    end: Annotated[AwareDatetime | None, Query(description="Last headline time (exclusive).")] = None,
    symbol: str | None = None,
    horizon: str | None = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_ROWS)] = None,
    format: Annotated[str | None, Query(description="jsonl, csv or parquet; else the Accept header.")] = None,
) -> Response:
    """Labelled rows for a time range as JSON lines, CSV or Parquet."""
    fmt = _format(format, request.headers.get("accept"))
    with session_scope(_settings(request).resolved_database_url) as session:
        found = query_rows(session, start, end, symbol, horizon, limit)
    return Response(render_rows(found, fmt), media_type=MEDIA_TYPES[fmt])  # type: ignore[arg-type]


@router.get("/stats")
def get_stats(request: Request) -> dict[str, Any]:
    """Headline, candle, label and gap counts, quarantined rows by reason, and each source's
    last success and error (URLs redacted: this endpoint needs no token)."""
    with session_scope(_settings(request).resolved_database_url) as session:
        found = stats(session)
        found["quarantined"] = quarantine_counts(session)
    for source in found.get("sources", []):
        source["source"] = redact_text(source.get("source"))
        source["last_error"] = redact_text(source.get("last_error"))
    return found
