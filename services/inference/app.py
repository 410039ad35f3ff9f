"""The inference API app: the routes of ``api.py`` over one replica's ``ModelClient``.

Built inside each Ray Serve replica (``serve_app.py``), which owns the model service.
"""

from __future__ import annotations

from fastapi import FastAPI

from services.common.http import create_app, database_ready
from services.inference.api import InFlightLimit, ModelClient, router
from services.inference.settings import InferenceSettings


async def model_ready(app: FastAPI) -> None:
    await app.state.model_client.check_health()


def build_app(settings: InferenceSettings, client: ModelClient) -> FastAPI:
    """The API over ``client``; its /metrics also shows vLLM's ``vllm:*`` (same process, same registry)."""
    # No migration here: the replica has read the registry before this app starts, so the
    # schema must already exist (`hsig inference serve` and compose's migrate job see to it),
    # and several replicas would only race each other on a fresh database.
    app = create_app(
        "inference", settings, [router], readiness_checks=(database_ready, model_ready), migrate=False
    )
    app.state.model_client = client
    app.state.in_flight = InFlightLimit(settings.max_in_flight, settings.retry_after_seconds)
    return app
