"""The FastAPI app every service is built from: health, readiness, metrics, one error shape.

``create_app`` wires what is common; each service passes its routers, its lifespan (which
creates engines and clients once) and its readiness checks. Errors always answer
``{"error": {"message", "type", "param", "code"}}`` (the OpenAI / vLLM shape).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.db import ping
from services.common.errors import HsigError, TemporaryError
from services.common.metrics import http_metrics_middleware, metrics_response
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[FastAPI], Any]  # raises (or returns an awaitable that raises) when not ready
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def error_body(message: str, error_type: str, code: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HsigError)
    async def _hsig(_: Request, exc: HsigError) -> JSONResponse:
        headers = {}
        if isinstance(exc, TemporaryError) and exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if exc.status_code >= 500 and not isinstance(exc, TemporaryError):
            log.error("%s: %s", type(exc).__name__, exc.message)
        return JSONResponse(
            error_body(exc.message, exc.error_type, exc.status_code, exc.param),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body(message, "invalid_request_error", 422, param), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), "http_error", exc.status_code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )


def _migrate_or_warn(settings: CommonSettings) -> None:
    # An unreachable database must not stop the service from starting: /readyz reports it.
    from services.common.db.migrate import upgrade

    try:
        upgrade(settings.resolved_database_url)
    except Exception as exc:
        log.warning("could not migrate the database at start-up (%s); /readyz will say why", exc)


def database_ready(app: FastAPI) -> None:
    ping(app.state.settings.resolved_database_url)


def create_app(
    service: str,
    settings: CommonSettings,
    routers: Sequence[APIRouter] = (),
    lifespan: Lifespan | None = None,
    readiness_checks: Sequence[ReadinessCheck] = (database_ready,),
    version: str = "0.1.0",
    migrate: bool = True,
) -> FastAPI:
    """The service's app. With ``migrate`` the database is brought to the newest schema as the
    app starts (idempotent; compose runs a one-shot migration first, so there it finds nothing to do)."""

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            await asyncio.to_thread(_migrate_or_warn, settings)
        if lifespan is None:
            yield
        else:
            async with lifespan(app):
                yield

    app = FastAPI(title=f"headline-signal {service}", version=version, lifespan=_lifespan)
    app.state.settings = settings
    app.state.service = service
    app.middleware("http")(http_metrics_middleware(service))
    _install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        failures = []
        for check in readiness_checks:
            try:
                outcome = await asyncio.to_thread(check, app)
                if asyncio.iscoroutine(outcome):
                    await outcome
            except Exception as exc:  # any failure means "not ready", with its reason
                failures.append(f"{getattr(check, '__name__', 'check')}: {exc}")
        if failures:
            return JSONResponse({"status": "not ready", "service": service, "failures": failures}, 503)
        return JSONResponse({"status": "ready", "service": service})

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Any:
        return metrics_response()

    for router in routers:
        app.include_router(router)
    return app
