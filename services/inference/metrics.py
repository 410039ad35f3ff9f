"""Prometheus metrics of the inference API, per adapter (``hsig_inference_*``).

They live in the replica that answers ``/metrics`` on port 8000, beside vLLM's own ``vllm:*``
families (the engine runs in the same process and registers on the same default registry).
Ray Serve's metrics (``ray_serve_*``) come from Ray's metrics agent on ``HSIG_RAY_METRICS_PORT``.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from services.common.prompts import INCREASE
from services.common.schemas import Prediction, PredictResponse

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
FULL_MODELS_SERVED = Gauge(
    "hsig_inference_full_models_served", "Full fine-tunes served now, each by an engine of its own."
)


class _RunningMean:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, tuple[float, int]] = {}

    def add(self, adapter: str, total: float, count: int) -> float:
        with self._lock:
            old_total, old_count = self._totals.get(adapter, (0.0, 0))
            self._totals[adapter] = (old_total + total, old_count + count)
            return (old_total + total) / (old_count + count)


_means = _RunningMean()


def record_predictions(response: PredictResponse) -> None:
    # Grouped by adapter: each labelled child is looked up once per batch, not once per item
    # (the label lookups showed in the profile of 64-item batches).
    by_adapter: dict[str, list[Prediction]] = {}
    for prediction in response.predictions:
        by_adapter.setdefault(prediction.adapter, []).append(prediction)
    for adapter, predictions in by_adapter.items():
        REQUESTS.labels(adapter, "predict").inc(len(predictions))
        latency = LATENCY.labels(adapter, "predict")
        p_hist = P_INCREASE.labels(adapter)
        labels: dict[str, int] = {}
        total = 0.0
        for prediction in predictions:
            latency.observe(prediction.latency_ms / 1000)
            p_hist.observe(prediction.p_increase)
            labels[prediction.label] = labels.get(prediction.label, 0) + 1
            total += prediction.p_increase
        for label, count in labels.items():
            PREDICTED_LABELS.labels(adapter, label).inc(count)
        P_INCREASE_MEAN.labels(adapter).set(_means.add(adapter, total, len(predictions)))


def record_completion(model: str, endpoint: str, seconds: float) -> None:
    REQUESTS.labels(model, endpoint).inc()
    LATENCY.labels(model, endpoint).observe(seconds)
