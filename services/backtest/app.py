"""The backtest service: FastAPI app on 8003 with the run scheduler beside it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.backtest import store
from services.backtest.api import router
from services.backtest.metrics import publish
from services.backtest.schedule import BacktestScheduler
from services.backtest.settings import BacktestSettings
from services.common.http import create_app
from services.common.settings import get_settings

log = logging.getLogger(__name__)


def _restore_metrics(app: FastAPI) -> None:
    """Gauges come back from the last report, so a restart does not blank the dashboards."""
    run = store.last_succeeded(app.state.settings.resolved_database_url)
    if run is not None and run.summary.get("rows") and run.finished_at is not None:
        publish(run.summary["rows"], run.finished_at.timestamp())


def build_app(settings: BacktestSettings | None = None) -> FastAPI:
    settings = settings or get_settings(BacktestSettings)
    scheduler = BacktestScheduler(settings)  # a bad cron expression fails here, at start-up

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.scheduler = scheduler
        try:
            yield
        finally:
            scheduler.shutdown()

    # The scheduler resumes unfinished runs from the database: it starts once the database
    # answers, so a backtest service started without one still starts (and says why at /readyz).
    return create_app(
        "backtest",
        settings,
        routers=[router],
        lifespan=lifespan,
        on_database_ready=(_restore_metrics, lambda _: scheduler.start()),
    )


def serve(settings: BacktestSettings | None = None) -> None:
    import uvicorn

    settings = settings or get_settings(BacktestSettings)
    uvicorn.run(
        build_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower()
    )
