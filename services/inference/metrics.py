"""Prometheus metrics of the inference API, per adapter (``hsig_inference_*``).

They live in the ingress replica, the process that answers ``/metrics`` on port 8000; that
endpoint also mirrors vLLM's own ``vllm:*`` families from the model replica (see
``VllmMetricsMirror``). Ray Serve's metrics (``ray_serve_*``) come from Ray's metrics agent on
``HSIG_RAY_METRICS_PORT``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from services.common.prompts import INCREASE
from services.common.schemas import PredictResponse

REQUESTS = Counter(
    "hsig_inference_requests_total",
    "Items answered, by adapter (or base) and endpoint (predict, completions, chat).",
    ["adapter", "endpoint"],
)
LATENCY = Histogram(
    "hsig_inference_latency_seconds",
    "Time to score (and explain, when asked) one item, or to answer one completion, by adapter.",
    ["adapter", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICTED_LABELS = Counter(
    "hsig_inference_predicted_labels_total", "Predicted labels, by adapter and label.", ["adapter", "label"]
)
P_INCREASE = Histogram(
    "hsig_inference_p_increase",
    f"p({INCREASE}) of each prediction, by adapter; mean = _sum / _count.",
    ["adapter"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
P_INCREASE_MEAN = Gauge(
    "hsig_inference_p_increase_mean",
    f"Mean p({INCREASE}) of every prediction so far, by adapter.",
    ["adapter"],
)
REJECTED = Counter("hsig_inference_rejected_total", "Requests refused with 503 because the service was full.")
IN_FLIGHT = Gauge("hsig_inference_in_flight", "Requests being worked on now.")
ADAPTERS_SERVED = Gauge("hsig_inference_adapters_served", "Adapters served now (besides the base model).")


class _RunningMean:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, tuple[float, int]] = {}

    def add(self, adapter: str, value: float) -> float:
        with self._lock:
            total, count = self._totals.get(adapter, (0.0, 0))
            self._totals[adapter] = (total + value, count + 1)
            return (total + value) / (count + 1)


_means = _RunningMean()


def record_predictions(response: PredictResponse) -> None:
    for prediction in response.predictions:
        adapter = prediction.adapter
        REQUESTS.labels(adapter, "predict").inc()
        LATENCY.labels(adapter, "predict").observe(prediction.latency_ms / 1000)
        PREDICTED_LABELS.labels(adapter, prediction.label).inc()
        P_INCREASE.labels(adapter).observe(prediction.p_increase)
        P_INCREASE_MEAN.labels(adapter).set(_means.add(adapter, prediction.p_increase))


def record_completion(model: str, endpoint: str, seconds: float) -> None:
    REQUESTS.labels(model, endpoint).inc()
    LATENCY.labels(model, endpoint).observe(seconds)


class VllmMetricsMirror:
    """A collector that re-exports the last ``vllm:*`` families fetched from the model replica.

    prometheus_client collects synchronously and the replica answers asynchronously, so the
    ingress fetches the families every few seconds and this collector returns the latest copy.
    """

    def __init__(self) -> None:
        self._families: list[Any] = []

    def update(self, families: list[Any]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Any]:
        return list(self._families)


_mirror: VllmMetricsMirror | None = None
_mirror_lock = threading.Lock()


def vllm_mirror() -> VllmMetricsMirror:
    """The process's one mirror, registered on the default registry the first time it is asked for."""
    global _mirror
    with _mirror_lock:
        if _mirror is None:
            _mirror = VllmMetricsMirror()
            REGISTRY.register(_mirror)  # type: ignore[arg-type]
        return _mirror
