"""Prometheus helpers every service uses: HTTP request metrics and the /metrics payload.

Service metrics are module-level objects in each service's own ``metrics.py`` (registered
once per process on the default registry), all named ``hsig_<service>_...``.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "hsig_http_requests_total",
    "HTTP requests answered, by service, route template, method and status code.",
    ["service", "route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "hsig_http_request_duration_seconds",
    "Time to answer an HTTP request, by service and route template.",
    ["service", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def _route_template(scope: Scope) -> str:
    # The template ("/v1/jobs/{job_id}"), never the raw path: raw paths explode cardinality.
    # The router writes the matched route into the scope it was given, which is this one.
    return getattr(scope.get("route"), "path", "unmatched")


class HttpMetricsMiddleware:
    """Counts and times every HTTP request: a pure ASGI middleware.

    Starlette's ``BaseHTTPMiddleware`` (``app.middleware("http")``) runs the app in a task of
    its own and streams the response through memory channels, which showed in the profile of
    the inference API on every request; this one only watches the messages go by.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what is counted if the app raises before it starts a response

        async def send_watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        finally:
            route = _route_template(scope)
            HTTP_REQUESTS.labels(self.service, route, scope["method"], str(status)).inc()
            HTTP_LATENCY.labels(self.service, route).observe(time.perf_counter() - started)


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
