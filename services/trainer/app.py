"""The trainer service: FastAPI app on 8002 with the job worker running beside it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.http import create_app
from services.common.settings import get_settings
from services.trainer.api import router
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Worker


def build_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or get_settings(TrainerSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = Worker(settings) if settings.worker_enabled else None
        if worker is not None:
            worker.start()
        app.state.worker = worker
        try:
            yield
        finally:
            if worker is not None:
                await asyncio.to_thread(worker.stop)

    return create_app("trainer", settings, routers=[router], lifespan=lifespan)
