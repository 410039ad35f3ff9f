"""HTTP routes: start backtests and walk-forwards, list and fetch reports.

Logic lives in runner/schedule/store/walk_forwards."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse

from services.backtest import store, walk_forwards
from services.backtest.predictors.outbound import local_paths_on_volumes
from services.backtest.runner import preflight
from services.backtest.schedule import BacktestScheduler
from services.backtest.schemas import BacktestConfig, RunOut
from services.backtest.settings import BacktestSettings
from services.common import idempotency
from services.common.auth import Authorized
from services.common.db.models import BacktestRun
from services.common.errors import InvalidInput, NotFound
from services.common.http import MAX_ROW_ID, RowId
from services.common.idempotency import IdempotencyKey
from services.common.walk_forward_plan import WalkForwardRequest

router = APIRouter(prefix="/v1", tags=["backtest"])


def _settings(request: Request) -> BacktestSettings:
    return request.app.state.settings


def _scheduler(request: Request) -> BacktestScheduler:
    return request.app.state.scheduler


def run_out(run: BacktestRun) -> RunOut:
    ready = run.state == "succeeded"
    return RunOut(
        id=run.id,
        state=run.state,
        trigger=run.trigger,
        attempts=run.attempts,
        error=run.error,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        summary=run.summary or {},
        json_url=f"/v1/reports/{run.id}.json" if ready else None,
        html_url=f"/v1/reports/{run.id}.html" if ready else None,
    )


@router.post("/backtests", status_code=status.HTTP_202_ACCEPTED, dependencies=[Authorized])
async def start_backtest(
    config: BacktestConfig, request: Request, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Check the request at once (rows, adapters, leakage), then queue it; 202 with the run.
    With an ``Idempotency-Key`` a repeat returns the run the key queued, and queues nothing."""
    settings = _settings(request)
    key = idempotency.checked(idempotency_key)
    url = settings.resolved_database_url
    body = config.model_dump(mode="json")
    known = await asyncio.to_thread(idempotency.replay, url, BacktestRun, key, body) if key else None
    replayed = known is not None
    if known is None:
        local_paths_on_volumes(config, settings)
        await asyncio.to_thread(preflight, settings, config)
        run_id, replayed = await asyncio.to_thread(_scheduler(request).submit, config, "api", key)
        known = await asyncio.to_thread(store.get_run, url, run_id)
    headers = {"Location": f"/v1/backtests/{known.id}"}
    if replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"
    return JSONResponse(
        run_out(known).model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED, headers=headers
    )


@router.get("/backtests/{run_id}")
async def get_backtest(run_id: RowId, request: Request) -> RunOut:
    run = await asyncio.to_thread(store.get_run, _settings(request).resolved_database_url, run_id)
    return run_out(run)


@router.post("/walk-forwards", status_code=status.HTTP_202_ACCEPTED, dependencies=[Authorized])
async def start_walk_forward(
    body: WalkForwardRequest, request: Request, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Check the plan against the rows at once (422 naming the setting and the largest k that
    fits), then queue it for a pipeline worker (``hsig pipeline worker``); 202 with the item.
    With an ``Idempotency-Key`` a repeat returns the item the key queued, and queues nothing."""
    settings = _settings(request)
    key = idempotency.checked(idempotency_key)
    item, replayed = await asyncio.to_thread(walk_forwards.start_walk_forward, settings, body, key)
    out = await asyncio.to_thread(walk_forwards.walk_forward_out, settings, item)
    headers = {"Location": f"/v1/walk-forwards/{item.id}"}
    if replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"
    return JSONResponse(out.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED, headers=headers)


@router.get("/walk-forwards/{item_id}")
async def get_walk_forward(item_id: RowId, request: Request) -> walk_forwards.WalkForwardOut:
    """The item's state and the worker's last progress line, each fold (state, versions, its
    backtest's report URLs) and, once pooled, the pooled figures."""
    return await asyncio.to_thread(walk_forwards.get_walk_forward, _settings(request), item_id)


@router.post("/walk-forwards/{item_id}/cancel", dependencies=[Authorized])
async def cancel_walk_forward(item_id: RowId, request: Request) -> walk_forwards.WalkForwardOut:
    """Queued: cancelled at once, with the training jobs it left waiting. Running: state
    ``cancelling`` (again: the same answer); its worker finishes the fold in progress and ends
    it ``cancelled`` before the next fold. Succeeded, failed or cancelled: 409 naming the state."""
    return await asyncio.to_thread(walk_forwards.cancel_walk_forward, _settings(request), item_id)


@router.get("/walk-forwards")
async def list_walk_forwards(
    request: Request,
    state: Annotated[
        str | None, Query(max_length=16, description="Only walk-forwards in this state.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[walk_forwards.WalkForwardOut]:
    """Newest first."""
    return await asyncio.to_thread(walk_forwards.list_walk_forwards, _settings(request), state, limit)


@router.get("/reports")
async def list_reports(
    request: Request,
    state: Annotated[
        str | None, Query(description="Only runs in this state (default: succeeded).")
    ] = "succeeded",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunOut]:
    runs = await asyncio.to_thread(
        store.list_runs, _settings(request).resolved_database_url, state or None, limit
    )
    return [run_out(run) for run in runs]


@router.get("/reports/{name}", response_model=None)
async def get_report(
    name: str,
    request: Request,
    format: Annotated[
        Literal["json", "html"] | None, Query(description="Or use the .json/.html suffix.")
    ] = None,
) -> FileResponse:
    """``/v1/reports/7.html``, ``/v1/reports/7.json`` or ``/v1/reports/7?format=html``."""
    stem, _, suffix = name.partition(".")
    # isascii: str.isdigit() also accepts digits int() refuses ("²"); 19 digits hold any row id.
    valid = stem.isascii() and stem.isdigit() and len(stem) <= 19 and int(stem) <= MAX_ROW_ID
    if not valid or suffix not in ("", "json", "html"):
        raise InvalidInput(f"report {name[:40]!r} is not like 7, 7.json or 7.html", param="id")
    kind = suffix or format or "json"
    run = await asyncio.to_thread(store.get_run, _settings(request).resolved_database_url, int(stem))
    if run.state != "succeeded":
        raise NotFound(
            f"backtest run {run.id} has no report (state {run.state}: {run.error or 'not finished'})"
        )
    path = Path(run.json_path if kind == "json" else run.html_path or "")
    if not path.is_file():
        raise NotFound(f"the report file of run {run.id} is missing from the volume ({path})")
    media = "application/json" if kind == "json" else "text/html; charset=utf-8"
    return FileResponse(path, media_type=media)
