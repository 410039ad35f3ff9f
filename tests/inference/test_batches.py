"""Batches at engine speed (issue 17): a batch scores what single items score, bad batches cost
nothing, the service advertises its limits, and the backtest's predictor sizes itself by them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.backtest.predictors.service import ServicePredictor
from services.backtest.rows import EvalRows
from services.common.prompts import TREND_LABELS
from tests.inference.conftest import Stack

pytestmark = pytest.mark.slow

START = datetime(2021, 5, 3, 9, 0, tzinfo=UTC)
WORDS = ["Bitcoin", "ETF", "miners", "regulators", "whales", "exchange", "Fed", "halving"]


def _item(index: int, adapter: str | None = None) -> dict:
    """A different headline and minute each time, so no two prompts are the same."""
    item = {
        "headline": f"{WORDS[index % len(WORDS)]} news number {index}: prices move on report",
        "published_at": (START + timedelta(minutes=7 * index)).isoformat(),
    }
    if adapter is not None:
        item["adapter"] = adapter
    return item


def _prompt_tokens(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vllm:prompt_tokens_total"
    )


def test_a_full_batch_scores_each_item_as_it_scores_alone(inference_stack: Stack) -> None:
    """Batched tokenisation and the shared sampling parameters change no score (1e-6)."""
    limit = inference_stack.settings.max_batch_items
    adapters = ["alpha", "beta", "base", None]  # None: the request's adapter (alpha)
    items = [_item(i, adapters[i % len(adapters)]) for i in range(limit)]
    with inference_stack.client() as client:
        batch = client.post("/v1/predict", json={"items": items, "adapter": "alpha"})
        assert batch.status_code == 200, batch.text
        alone = []
        for item in items:
            response = client.post("/v1/predict", json={"items": [item], "adapter": "alpha"})
            assert response.status_code == 200, response.text
            alone.append(response.json()["predictions"][0])
    for together, single in zip(batch.json()["predictions"], alone, strict=True):
        assert together["adapter"] == single["adapter"]
        assert together["label"] == single["label"]
        for label in TREND_LABELS:
            assert together["probabilities"][label] == pytest.approx(single["probabilities"][label], abs=1e-6)


def test_a_batch_over_the_limit_is_a_422_naming_the_limit(inference_stack: Stack) -> None:
    limit = inference_stack.settings.max_batch_items
    with inference_stack.client() as client:
        response = client.post("/v1/predict", json={"items": [_item(i) for i in range(limit + 1)]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "items"
    assert f"at most {limit}" in error["message"] and "max_batch_items" in error["message"]


def test_an_unknown_adapter_in_a_batch_is_a_404_before_any_item_is_scored(inference_stack: Stack) -> None:
    items = [_item(i) for i in range(8)] + [_item(8, adapter="nowhere")]
    with inference_stack.client() as client:
        before = _prompt_tokens(client.get("/metrics").text)
        response = client.post("/v1/predict", json={"items": items, "adapter": "alpha"})
        after = _prompt_tokens(client.get("/metrics").text)
    assert response.status_code == 404
    assert "nowhere" in response.json()["error"]["message"]
    assert before > 0 and after == before  # the engine saw no prompt of the batch


def test_models_advertise_the_limits(inference_stack: Stack) -> None:
    with inference_stack.client() as client:
        limits = client.get("/v1/models").json()["limits"]
    settings = inference_stack.settings
    assert limits == {"max_batch_items": settings.max_batch_items, "max_in_flight": settings.max_in_flight}


def _rows(count: int) -> EvalRows:
    times = np.array([(START + timedelta(minutes=7 * i)).timestamp() for i in range(count)])
    return EvalRows(
        row_id=np.arange(count),
        headline=[_item(i)["headline"] for i in range(count)],
        published_at=[START + timedelta(minutes=7 * i) for i in range(count)],
        market_situation=[""] * count,
        headline_time=times,
        entry_time=times,
        exit_time=times + 3600,
        entry_price=np.ones(count),
        exit_price=np.ones(count),
        y_true=np.zeros(count, dtype=np.int8),
        exchange="test",
        symbol="BTC/USD",
        timeframe="1h",
        horizon="1h",
        flat_rows_left_out=0,
        time_precision=["minute"] * count,
    )


def test_the_backtest_predictor_sizes_its_batches_from_the_limits(inference_stack: Stack) -> None:
    """Batches of the advertised size, half the in-flight limit at once, scores in row order."""
    from services.backtest import metrics

    rows = _rows(37)  # two full batches of 16 and a short one
    predictor = ServicePredictor("svc-alpha", "alpha", inference_stack.base_url, inference_stack.database_url)
    with httpx.Client(base_url=inference_stack.base_url) as client:
        assert predictor.plan(client) == (16, 4)  # max_batch_items 16, max_in_flight 8 // 2
    counted = metrics.PREDICTED_ITEMS.labels("svc-alpha")._value.get()
    served = predictor.predict(rows)
    assert metrics.PREDICTED_ITEMS.labels("svc-alpha")._value.get() - counted == len(rows)
    assert metrics.PREDICTED_ITEMS_PER_SECOND.labels("svc-alpha")._value.get() > 0
    items = [
        {
            "headline": rows.headline[i],
            "published_at": rows.published_at[i].isoformat(),
            "time_precision": "minute",
        }
        for i in (0, 20, 36)
    ]
    with inference_stack.client() as client:
        direct = client.post("/v1/predict", json={"items": items, "adapter": "alpha"}).json()["predictions"]
    assert served.p_increase.shape == (len(rows),)
    for row, prediction in zip((0, 20, 36), direct, strict=True):
        assert served.p_increase[row] == pytest.approx(prediction["p_increase"], abs=1e-6)
        assert served.y_pred[row] == (prediction["label"] == "Increase")
