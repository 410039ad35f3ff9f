"""Predictions from the inference service's POST /v1/predict, in batches, with retries.

Batches are sized from the service's advertised limits (``limits`` on ``GET /v1/models``:
``max_batch_items`` and ``max_in_flight``) and several are in flight at once, so the engine
always has a queue (issue 17); a service that advertises none gets ``batch_size`` items, one
request at a time. Progress lines and ``hsig_backtest_predicted_items_per_second`` report
items/s. A 503 (overloaded, model loading) is retried after its Retry-After; timeouts and refused
connections are retried with exponential backoff; any other error stops the backtest with a
message naming the adapter, the URL and the service's own error text.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np

from services.backtest import metrics
from services.backtest.predictors.base import PredictionSet
from services.backtest.predictors.registry import adapter_manifest
from services.backtest.rows import EvalRows
from services.common.errors import InvalidInput, NotFound, OperationalError, TemporaryError
from services.common.prompts import INCREASE
from services.common.redact import redact_url
from services.common.schemas import (
    BASE_MODEL_NAME,
    AdapterManifest,
    PredictItem,
    PredictRequest,
    PredictResponse,
)

log = logging.getLogger(__name__)

# Of the requests a replica takes at once, a backtest uses at most half (live traffic keeps
# the rest) and at most this many: past a few, batches only wait in the engine's queue.
MAX_IN_FLIGHT = 4


@dataclass
class ServicePredictor:
    name: str
    adapter: str
    base_url: str
    database_url: str
    api_token: str = ""
    batch_size: int = 64  # the most items per request; the service's limit lowers it
    timeout_seconds: float = 120.0
    retries: int = 5
    kind: str = "service"
    in_flight: int = 0  # requests at once; 0: from the service's limits (1 if it gives none)

    def manifest(self) -> AdapterManifest | None:
        if self.adapter == BASE_MODEL_NAME:
            return None
        return adapter_manifest(self.database_url, self.adapter)

    def predict(self, rows: EvalRows) -> PredictionSet:
        self.manifest()  # an unknown adapter fails here, before any request
        headers = {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}
        with httpx.Client(base_url=self.base_url, timeout=self.timeout_seconds, headers=headers) as client:
            batch_size, in_flight = self.plan(client)
            starts = list(range(0, len(rows), batch_size))
            progress = _Progress(self.name, len(rows))
            log.info(
                "%s: %d rows in batches of %d, %d in flight", self.name, len(rows), batch_size, in_flight
            )

            def score(start: int) -> PredictResponse:
                response = self._post(client, self._request(rows, start, start + batch_size))
                progress.add(len(response.predictions))
                return response

            with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="predict") as pool:
                responses = list(pool.map(score, starts))  # in order, whatever order they finish in
        predictions = [prediction for response in responses for prediction in response.predictions]
        labels = [prediction.label for prediction in predictions]
        base_model = predictions[-1].base_model if predictions else ""
        y_pred = np.array([label == INCREASE for label in labels], dtype=np.int8)
        p_increase = np.array([prediction.p_increase for prediction in predictions], dtype=float)
        meta = {"adapter": self.adapter, "base_model": base_model, "url": redact_url(self.base_url)}
        return PredictionSet(self.name, self.kind, y_pred, p_increase, meta=meta)

    def plan(self, client: httpx.Client) -> tuple[int, int]:
        """Items per request and requests at once, from the service's advertised limits."""
        limits = self._limits(client)
        if limits is None:
            return self.batch_size, self.in_flight or 1
        batch_size = min(self.batch_size, int(limits["max_batch_items"]))
        in_flight = self.in_flight or max(1, min(MAX_IN_FLIGHT, int(limits["max_in_flight"]) // 2))
        return batch_size, in_flight

    def _limits(self, client: httpx.Client) -> dict[str, int] | None:
        # Best effort: an older service (or one that is still starting) has none to give, and
        # the batches then fall back to the configured size; /v1/predict reports real errors.
        try:
            response = client.get("/v1/models")
            limits = response.json().get("limits") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(limits, dict) or not {"max_batch_items", "max_in_flight"} <= limits.keys():
            return None
        return limits

    def _request(self, rows: EvalRows, start: int, stop: int) -> PredictRequest:
        precisions = rows.precisions()
        items = [
            PredictItem(
                headline=rows.headline[i],
                published_at=rows.published_at[i],
                market_situation=rows.market_situation[i] or None,
                time_precision=precisions[i],  # the prompt shows no finer part
            )
            for i in range(start, min(stop, len(rows)))
        ]
        return PredictRequest(items=items, adapter=self.adapter)

    def _post(self, client: httpx.Client, request: PredictRequest) -> PredictResponse:
        body = request.model_dump(mode="json")
        for attempt in range(self.retries + 1):
            try:
                response = client.post("/v1/predict", json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                wait, reason = min(2.0**attempt, 30.0), f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    if len(
                        parsed := PredictResponse.model_validate_json(response.content).predictions
                    ) != len(request.items):
                        raise OperationalError(
                            f"{redact_url(self.base_url)} returned {len(parsed)} predictions for {len(request.items)} items"
                        )
                    return PredictResponse(predictions=parsed)
                if response.status_code not in (429, 503):
                    raise self._error(response)
                wait = _retry_after(response, default=min(2.0**attempt, 30.0))
                reason = f"HTTP {response.status_code}"
            if attempt < self.retries:
                log.warning(
                    "%s: %s from %s; retrying in %.1f s", self.name, reason, redact_url(self.base_url), wait
                )
                time.sleep(wait)
        raise TemporaryError(
            f"inference at {redact_url(self.base_url)} did not answer for adapter {self.adapter!r} after "
            f"{self.retries + 1} attempts (last: {reason})",
            retry_after=wait,
        )

    def _error(self, response: httpx.Response) -> Exception:
        try:
            message = response.json()["error"]["message"]
        except Exception:  # not our error shape: show the start of the body
            message = response.text[:200]
        text = f"inference at {redact_url(self.base_url)} refused adapter {self.adapter!r}: HTTP {response.status_code}: {message}"
        if response.status_code == 404:
            return NotFound(text, param="adapter")
        if 400 <= response.status_code < 500:
            return InvalidInput(text)
        return OperationalError(text)


class _Progress:
    """Rows scored so far and the rate, logged and exported as each batch comes back."""

    def __init__(self, name: str, total: int) -> None:
        self._name = name
        self._total = total
        self._done = 0
        self._started = time.perf_counter()
        self._lock = threading.Lock()  # batches finish on several threads

    def add(self, count: int) -> None:
        with self._lock:
            self._done += count
            seconds = max(time.perf_counter() - self._started, 1e-9)
            rate = self._done / seconds
            metrics.PREDICTED_ITEMS.labels(self._name).inc(count)
            metrics.PREDICTED_ITEMS_PER_SECOND.labels(self._name).set(rate)
            log.info("%s: %d/%d rows scored, %.1f items/s", self._name, self._done, self._total, rate)


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", default)))
    except ValueError:
        return default
