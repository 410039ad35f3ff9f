"""The ingest service: FastAPI app on 8001 with the scheduler running beside it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.http import create_app
from services.common.settings import get_settings
from services.ingest.api import router
from services.ingest.scheduler import build_scheduler
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def build_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or get_settings(IngestSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.cycle_lock = asyncio.Lock()
        scheduler = build_scheduler(settings) if settings.scheduler_enabled else None
        if scheduler:
            scheduler.start()
            log.info(
                "ingest scheduler started: feeds every %ss, candles every %ss",
                settings.feed_interval_seconds,
                settings.candle_interval_seconds,
            )
        try:
            yield
        finally:
            if scheduler:
                scheduler.shutdown(wait=False)

    # The schema comes from create_app (as soon as the database answers); the scheduled parts
    # log and retry on their own while it does not.
    return create_app("ingest", settings, routers=[router], lifespan=lifespan)
