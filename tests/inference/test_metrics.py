"""Per-adapter Prometheus metrics on the API's /metrics, beside vLLM's and Ray Serve's own."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inference.conftest import Stack

LOCAL_PROMTOOL = Path(__file__).resolve().parents[2] / ".tools" / "usr" / "bin" / "promtool"

pytestmark = pytest.mark.slow


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_per_adapter_metrics_count_requests_labels_and_p_increase(inference_stack: Stack) -> None:
    item = {"headline": "Bitcoin climbs", "published_at": "2020-02-01T10:00:00Z"}
    with inference_stack.client() as client:
        before = _samples(client.get("/metrics").text)
        predictions = client.post("/v1/predict", json={"items": [item] * 3, "adapter": "beta"}).json()[
            "predictions"
        ]
        after = _samples(client.get("/metrics").text)
    label = predictions[0]["label"]
    assert (
        _value(after, "hsig_inference_requests_total", adapter="beta", endpoint="predict")
        - _value(before, "hsig_inference_requests_total", adapter="beta", endpoint="predict")
        == 3
    )
    assert (
        _value(after, "hsig_inference_predicted_labels_total", adapter="beta", label=label)
        - _value(before, "hsig_inference_predicted_labels_total", adapter="beta", label=label)
        == 3
    )
    assert _value(after, "hsig_inference_latency_seconds_count", adapter="beta", endpoint="predict") >= 3
    count = _value(after, "hsig_inference_p_increase_count", adapter="beta")
    total = _value(after, "hsig_inference_p_increase_sum", adapter="beta")
    assert _value(after, "hsig_inference_p_increase_mean", adapter="beta") == pytest.approx(total / count)


def test_vllm_metrics_appear_beside_ours_on_the_api(inference_stack: Stack) -> None:
    with inference_stack.client() as client:
        samples = _samples(client.get("/metrics").text)
    names = {name for name, _ in samples}
    assert "vllm:num_requests_running" in names
    assert "vllm:kv_cache_usage_perc" in names
    assert _value(samples, "hsig_inference_adapters_served") >= 4  # alpha, beta, gamma, hate


def test_ray_serve_metrics_come_from_rays_metrics_agent(inference_stack: Stack) -> None:
    port = inference_stack.settings.ray_metrics_port
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        except httpx.HTTPError:
            text = ""
        if "ray_serve_deployment_request_counter" in text:
            break
        time.sleep(2)
    assert "ray_serve_deployment_request_counter" in text


def test_metrics_page_passes_promtool(inference_stack: Stack) -> None:
    promtool = str(LOCAL_PROMTOOL) if LOCAL_PROMTOOL.exists() else shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make tools)")
    with inference_stack.client() as client:
        page = client.get("/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert not problems, problems[:5]
