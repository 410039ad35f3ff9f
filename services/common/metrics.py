"""Prometheus helpers every service uses: HTTP request metrics and the /metrics payload.

Service metrics are module-level objects in each service's own ``metrics.py`` (registered
once per process on the default registry), all named ``hsig_<service>_...``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

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


def _route_template(request: Request) -> str:
    # The template ("/v1/jobs/{job_id}"), never the raw path: raw paths explode cardinality.
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def http_metrics_middleware(
    service: str,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_template(request)
            HTTP_REQUESTS.labels(service, route, request.method, str(status)).inc()
            HTTP_LATENCY.labels(service, route).observe(time.perf_counter() - started)

    return middleware


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
