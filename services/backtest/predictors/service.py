"""Predictions from the inference service's POST /v1/predict, in batches, with retries.

A 503 (overloaded, model loading) is retried after its Retry-After; timeouts and refused
connections are retried with exponential backoff; any other error stops the backtest with a
message naming the adapter, the URL and the service's own error text.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
import numpy as np

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


@dataclass
class ServicePredictor:
    name: str
    adapter: str
    base_url: str
    database_url: str
    api_token: str = ""
    batch_size: int = 64
    timeout_seconds: float = 120.0
    retries: int = 5
    kind: str = "service"

    def manifest(self) -> AdapterManifest | None:
        if self.adapter == BASE_MODEL_NAME:
            return None
        return adapter_manifest(self.database_url, self.adapter)

    def predict(self, rows: EvalRows) -> PredictionSet:
        self.manifest()  # an unknown adapter fails here, before any request
        labels: list[str] = []
        p_increase: list[float] = []
        base_model = ""
        headers = {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}
        with httpx.Client(base_url=self.base_url, timeout=self.timeout_seconds, headers=headers) as client:
            for start in range(0, len(rows), self.batch_size):
                response = self._post(client, self._request(rows, start, start + self.batch_size))
                for prediction in response.predictions:
                    labels.append(prediction.label)
                    p_increase.append(prediction.p_increase)
                    base_model = prediction.base_model
                log.info("%s: %d/%d rows scored", self.name, len(labels), len(rows))
        y_pred = np.array([label == INCREASE for label in labels], dtype=np.int8)
        meta = {"adapter": self.adapter, "base_model": base_model, "url": redact_url(self.base_url)}
        return PredictionSet(self.name, self.kind, y_pred, np.array(p_increase, dtype=float), meta=meta)

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


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", default)))
    except ValueError:
        return default
