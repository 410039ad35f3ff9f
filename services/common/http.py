"""The FastAPI app every service is built from: health, readiness, metrics, one error shape.

``create_app`` wires what is common; each service passes its routers, its lifespan (which
creates engines and clients once) and its readiness checks. Errors always answer
``{"error": {"message", "type", "param", "code"}}`` (the OpenAI / vLLM shape).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.body_limit import BodyLimit
from services.common.db import ping
from services.common.errors import HsigError, TemporaryError
from services.common.metrics import HttpMetricsMiddleware, metrics_response
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)

# Row ids are 64-bit integers in both databases: anything larger is a 422, not a 500 from the driver.
MAX_ROW_ID = 2**63 - 1
RowId = Annotated[int, PathParam(ge=1, le=MAX_ROW_ID, description="A row id (1 to 2^63-1).")]

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

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        # Only a lost connection is the client's to retry; any other database error is a bug.
        if not exc.connection_invalidated and not isinstance(exc, OperationalError | InterfaceError):
            raise exc
        log.warning("database unavailable during a request: %s", str(exc).splitlines()[0])
        return JSONResponse(
            error_body("database unavailable; retry shortly", "service_unavailable", 503),
            status_code=503,
            headers={"Retry-After": "5"},
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


class DatabaseWatch:
    """Brings the database to the newest schema once it answers, then runs the service's hooks.

    A service must start without its database (a restart of PostgreSQL, a compose start order,
    a network blip): it serves /healthz at once, /readyz answers 503 with the reason, and it
    becomes ready when the database answers, without a restart. Each attempt is cheap, so one
    runs at start-up, at every /readyz (the probe drives recovery) and on a backoff thread.
    """

    def __init__(self, app: FastAPI, migrate: bool, hooks: Sequence[Callable[[FastAPI], None]]) -> None:
        self.app, self.migrate, self.hooks = app, migrate, list(hooks)
        self.ready = False
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_once(self) -> bool:
        """Migrate (or ping) and run the hooks not yet run; True once all have succeeded.

        An attempt already under way (a connect to an unreachable host can take its full
        timeout) is not waited for: /readyz answers at once with the last reason."""
        if self.ready:
            return True
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self.ready:
                return True
            try:
                self._connect()
                while self.hooks:
                    self.hooks[0](self.app)
                    self.hooks.pop(0)
            except Exception as exc:  # unreachable, or a hook failed: both are retried
                if self.last_error is None:
                    log.warning("database not ready (%s); /readyz says why, retrying in the background", exc)
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                return False
            if self.last_error is not None:
                log.info("database reachable again: ready")
            self.ready, self.last_error = True, None
            return True
        finally:
            self._lock.release()

    def _connect(self) -> None:
        url = self.app.state.settings.resolved_database_url
        if self.migrate:
            from services.common.db.migrate import upgrade

            upgrade(url)  # idempotent; compose runs a one-shot migration first
        else:
            ping(url)

    def start(self) -> None:
        if not self.try_once():
            self._thread = threading.Thread(target=self._retry, name="database-watch", daemon=True)
            self._thread.start()

    def _retry(self) -> None:
        delay = 1.0
        while not self._stop.wait(delay) and not self.try_once():
            delay = min(delay * 2, 15.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def database_ready(app: FastAPI) -> None:
    watch: DatabaseWatch | None = getattr(app.state, "database_watch", None)
    if watch is not None and not watch.try_once():
        raise RuntimeError(
            f"database unavailable: {watch.last_error or 'the first attempt to reach it is under way'}"
        )
    ping(app.state.settings.resolved_database_url)


def create_app(
    service: str,
    settings: CommonSettings,
    routers: Sequence[APIRouter] = (),
    lifespan: Lifespan | None = None,
    readiness_checks: Sequence[ReadinessCheck] = (database_ready,),
    version: str = "0.1.0",
    migrate: bool = True,
    on_database_ready: Sequence[Callable[[FastAPI], None]] = (),
) -> FastAPI:
    """The service's app. With ``migrate`` the database is brought to the newest schema as the
    app starts, or as soon as it answers (``DatabaseWatch``); then ``on_database_ready`` runs,
    once, in order: what a service does with its database at start-up goes there, not in its
    lifespan, so that a service started without its database still starts."""

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        watch = DatabaseWatch(app, migrate, on_database_ready)
        app.state.database_watch = watch
        await asyncio.to_thread(watch.start)
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            watch.stop()

    app = FastAPI(title=f"headline-signal {service}", version=version, lifespan=_lifespan)
    app.state.settings = settings
    app.state.service = service
    app.add_middleware(HttpMetricsMiddleware, service=service)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # outermost: before parsing
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
