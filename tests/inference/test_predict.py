"""POST /v1/predict against the real stack: scores, mixing adapters, parity with plain peft."""

from __future__ import annotations

import pytest

from services.common.prompts import HATE_LABELS, TREND_LABELS, prompt_for
from services.common.schemas import PredictItem
from tests.inference.conftest import Stack

pytestmark = pytest.mark.slow

TOL = 1e-4
WHEN = "2020-03-12T14:30:00Z"
HEADLINES = [
    "Bitcoin plunges as markets sell off on virus fears",
    "Fed cuts rates to zero and launches massive bond buying",
    "Crypto exchange adds institutional custody for bitcoin",
]


def _item(
    headline: str, adapter: str | None = None, situation: str | None = "Sharp decrease after a small increase"
) -> dict:
    item = {"headline": headline, "published_at": WHEN, "market_situation": situation}
    if adapter is not None:
        item["adapter"] = adapter
    return item


def _predict(stack: Stack, body: dict) -> list[dict]:
    with stack.client() as client:
        response = client.post("/v1/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_a_prediction_carries_normalised_label_probabilities(inference_stack: Stack) -> None:
    (prediction,) = _predict(inference_stack, {"items": [_item(HEADLINES[0])], "adapter": "alpha"})
    assert set(prediction["probabilities"]) == set(TREND_LABELS)
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    assert prediction["p_increase"] == prediction["probabilities"]["Increase"]
    assert prediction["label"] == max(prediction["probabilities"], key=prediction["probabilities"].get)
    assert prediction["adapter"] == "alpha"
    assert prediction["base_model"] == inference_stack.model_dir.name
    assert prediction["explanation"] is None  # only generated when asked for
    assert prediction["latency_ms"] > 0


def test_mixed_batch_matches_each_item_alone_and_adapters_differ(inference_stack: Stack) -> None:
    adapters = ["alpha", "beta", "gamma", "base"]
    mixed_items = [_item(headline, adapter) for headline in HEADLINES for adapter in adapters]
    mixed = _predict(inference_stack, {"items": mixed_items})
    alone = [_predict(inference_stack, {"items": [item]})[0] for item in mixed_items]
    for together, single in zip(mixed, alone, strict=True):
        assert together["adapter"] == single["adapter"]
        for label in TREND_LABELS:
            assert together["probabilities"][label] == pytest.approx(single["probabilities"][label], abs=TOL)
    by_adapter = {}
    for item, prediction in zip(mixed_items, mixed, strict=True):
        by_adapter.setdefault(item["adapter"], []).append(prediction["p_increase"])
    for first in adapters:
        for second in adapters:
            if first < second:  # each pair of adapters disagrees somewhere by far more than noise
                gaps = [abs(a - b) for a, b in zip(by_adapter[first], by_adapter[second], strict=True)]
                assert max(gaps) > 1e-3, (first, second, gaps)


def test_same_input_gives_the_same_numbers(inference_stack: Stack) -> None:
    body = {"items": [_item(headline) for headline in HEADLINES], "adapter": "beta"}
    first = _predict(inference_stack, body)
    second = _predict(inference_stack, body)
    assert [p["probabilities"] for p in first] == [p["probabilities"] for p in second]


def test_request_adapter_applies_unless_the_item_names_its_own(inference_stack: Stack) -> None:
    predictions = _predict(
        inference_stack,
        {"items": [_item(HEADLINES[0]), _item(HEADLINES[0], adapter="base")], "adapter": "alpha"},
    )
    assert [p["adapter"] for p in predictions] == ["alpha", "base"]


def test_explanation_only_when_asked(inference_stack: Stack) -> None:
    body = {"items": [_item(HEADLINES[1])], "adapter": "alpha", "explain": True}
    (explained,) = _predict(inference_stack, body)
    (plain,) = _predict(inference_stack, {**body, "explain": False})
    assert isinstance(explained["explanation"], str)
    assert plain["explanation"] is None
    assert explained["probabilities"] == pytest.approx(plain["probabilities"], abs=TOL)
    (again,) = _predict(inference_stack, body)
    assert again["explanation"] == explained["explanation"]  # greedy: deterministic


def _peft_scores(
    stack: Stack, adapter: str | None, prompts: list[str], labels: tuple[str, ...]
) -> list[dict]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.common.prompts import bos_id_of
    from services.common.scoring import score_with_transformers

    tokenizer = AutoTokenizer.from_pretrained(stack.model_dir)
    model = AutoModelForCausalLM.from_pretrained(stack.model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, stack.adapters_path / adapter / "v1")
    return score_with_transformers(model, tokenizer, prompts, labels, bos_id=bos_id_of(tokenizer))


@pytest.mark.parametrize("adapter", ["alpha", "gamma", None])
def test_scores_match_plain_peft(inference_stack: Stack, adapter: str | None) -> None:
    """The serving side of the trainer's cross-check: vLLM's p(label) equals peft's within 1e-4."""
    items = [_item(headline, adapter or "base") for headline in HEADLINES]
    served = _predict(inference_stack, {"items": items})
    prompts = [
        prompt_for(
            "btc-trend",
            headline=item["headline"],
            published_at=PredictItem.model_validate(item).published_at,
            market_situation=item["market_situation"],
        )
        for item in items
    ]
    expected = _peft_scores(inference_stack, adapter, prompts, TREND_LABELS)
    for prediction, reference in zip(served, expected, strict=True):
        for label in TREND_LABELS:
            assert prediction["probabilities"][label] == pytest.approx(reference[label], abs=TOL)


def test_multi_token_labels_are_scored_as_whole_sequences(inference_stack: Stack) -> None:
    """An implicit-hate adapter scores Yes / No / Unsure (several tokens each) like peft does."""
    posts = ["They should all go back where they came from", "What a lovely day at the beach"]
    served = _predict(inference_stack, {"items": [_item(post) for post in posts], "adapter": "hate"})
    expected = _peft_scores(
        inference_stack, "hate", [prompt_for("implicit-hate", post=post) for post in posts], HATE_LABELS
    )
    for prediction, reference in zip(served, expected, strict=True):
        assert set(prediction["probabilities"]) == set(HATE_LABELS)
        assert prediction["p_increase"] == 0.0
        for label in HATE_LABELS:
            assert prediction["probabilities"][label] == pytest.approx(reference[label], abs=TOL)
