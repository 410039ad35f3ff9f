"""The HTTP API on port 8000: thin routers over a ``ModelClient`` (the replica's ``ModelService``).

Parse, check capacity, call, record metrics, return. Logic lives in the model service; the
one piece of state here is the in-flight counter that answers 503 before work piles up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from services.common.auth import Authorized
from services.common.errors import Overloaded
from services.common.schemas import PredictRequest, PredictResponse
from services.inference import metrics
from services.inference.openai_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)

log = logging.getLogger(__name__)

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ModelClient(Protocol):
    """What the API needs from the model side (``services.inference.service.ModelService``)."""

    async def predict(self, request: PredictRequest) -> PredictResponse: ...
    async def completion(self, request: CompletionRequest) -> CompletionResponse: ...
    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse: ...
    async def models(self) -> ModelList: ...
    async def adapters(self) -> list[dict[str, Any]]: ...
    async def load_adapter(self, name: str, wait: bool = True) -> dict[str, Any]: ...
    async def unload_adapter(self, name: str) -> None: ...
    async def check_health(self) -> None: ...


class InFlightLimit:
    """At most ``limit`` requests at once; the next one is refused at once with 503 + Retry-After."""

    def __init__(self, limit: int, retry_after: float) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.current = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.current >= self.limit:
            metrics.REJECTED.inc()
            raise Overloaded(
                f"{self.current} requests in flight (limit {self.limit}); retry later",
                retry_after=self.retry_after,
            )
        self.current += 1
        metrics.IN_FLIGHT.set(self.current)
        try:
            yield
        finally:
            self.current -= 1
            metrics.IN_FLIGHT.set(self.current)


async def get_client(request: Request) -> ModelClient:
    # async: FastAPI runs a plain-def dependency in its thread pool, a thread hop per request
    # (in the profile of single-item predictions at c1; nothing here blocks).
    return request.app.state.model_client


async def capacity(request: Request) -> AsyncIterator[None]:
    async with request.app.state.in_flight.slot():
        yield


Client = Annotated[ModelClient, Depends(get_client)]
Limited = Depends(capacity)
AdapterName = Annotated[str, Path(pattern=ADAPTER_NAME, max_length=128)]

router = APIRouter(prefix="/v1")


@router.post("/predict", tags=["predict"], dependencies=[Limited])
async def predict(body: PredictRequest, client: Client) -> PredictResponse:
    response = await client.predict(body)
    metrics.record_predictions(response)
    return response


@router.post("/completions", tags=["openai"], dependencies=[Limited])
async def completions(body: CompletionRequest, client: Client) -> CompletionResponse:
    started = time.perf_counter()
    response = await client.completion(body)
    metrics.record_completion(body.model, "completions", time.perf_counter() - started)
    return response


@router.post("/chat/completions", tags=["openai"], dependencies=[Limited])
async def chat_completions(body: ChatCompletionRequest, client: Client) -> ChatCompletionResponse:
    started = time.perf_counter()
    response = await client.chat(body)
    metrics.record_completion(body.model, "chat", time.perf_counter() - started)
    return response


@router.get("/models", tags=["openai"])
async def models(client: Client) -> ModelList:
    return await client.models()


@router.get("/adapters", tags=["adapters"])
async def adapters(client: Client) -> dict[str, Any]:
    return {"adapters": await client.adapters()}


@router.post("/adapters/{name}/load", tags=["adapters"], dependencies=[Authorized])
async def load_adapter(
    name: AdapterName,
    client: Client,
    wait: Annotated[
        bool, Query(description="Answer once it is served; false: 202 while a full model's engine starts.")
    ] = True,
) -> JSONResponse:
    row = await client.load_adapter(name, wait=wait)
    return JSONResponse(row, status_code=202 if row["status"] == "starting" else 200)


@router.delete("/adapters/{name}", tags=["adapters"], status_code=204, dependencies=[Authorized])
async def unload_adapter(name: AdapterName, client: Client) -> Response:
    await client.unload_adapter(name)
    return Response(status_code=204)
