"""Full fine-tunes served beside the adapters, each by a vLLM engine of its own, with no restart.

The tests run in order on the session's inference stack (max_full_models 1): a model vLLM
refuses is reported and costs the others nothing; a published full model is served on request
and answers every endpoint by name, with the scores plain transformers gives; a second one does
not fit and gets a 409 naming the limit; DELETE stops the engine.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.prompts import TREND_LABELS, bos_id_of, btc_trend_prompt
from services.common.scoring import p_increase, score_with_transformers
from tests.inference.conftest import Stack
from tests.support.adapters import publish_full
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow

ITEMS = [
    {"headline": "Bitcoin rallies past 10,000 dollars", "published_at": "2020-02-01T10:00:00Z"},
    {"headline": "Regulators warn about crypto exchanges", "published_at": "2020-02-03T15:30:00Z"},
]
TOLERANCE = 1e-4  # vLLM's CPU kernels sum in another order than eager PyTorch (both fp32)


def _rows(stack: Stack) -> dict[str, dict]:
    with stack.client() as client:
        return {row["name"]: row for row in client.get("/v1/adapters").json()["adapters"]}


def _predict(stack: Stack, body: dict) -> list[dict]:
    with stack.client() as client:
        response = client.post("/v1/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_a_full_model_vllm_refuses_is_failed_with_its_reason(inference_stack: Stack) -> None:
    stack = inference_stack
    path = publish_full(
        stack.model_dir, stack.adapters_path, "alien", seed=7, database_url=stack.database_url
    )
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["AlienForCausalLM"]}))
    with stack.client() as client:
        load = client.post("/v1/adapters/alien/load", headers=stack.auth)
        models = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert load.status_code == 409, load.text
    assert "AlienForCausalLM" in load.json()["error"]["message"]  # vLLM's own words
    row = _rows(stack)["alien"]
    assert row["status"] == "failed" and "AlienForCausalLM" in row["reason"]
    assert models["alien"]["kind"] == "full" and models["alien"]["status"] == "failed"
    assert 0.0 < _predict(stack, {"items": ITEMS[:1], "adapter": "alpha"})[0]["p_increase"] < 1.0
    with session_scope(stack.database_url) as session:  # retired: its slot is free for the next
        session.execute(update(Adapter).where(Adapter.name == "alien").values(status="deleted"))


def test_a_full_model_missing_a_file_is_refused_before_any_engine_starts(inference_stack: Stack) -> None:
    stack = inference_stack
    path = publish_full(stack.model_dir, stack.adapters_path, "mute", seed=8, database_url=stack.database_url)
    (path / "tokenizer.json").unlink()
    with stack.client() as client:
        load = client.post("/v1/adapters/mute/load", headers=stack.auth)
    assert load.status_code == 409 and "tokenizer" in load.json()["error"]["message"]
    assert _rows(stack)["mute"]["status"] == "unservable"
    from ray import serve

    assert "full-mute-v1" not in serve.status().applications


def test_a_published_full_model_is_served_by_its_own_engine(inference_stack: Stack) -> None:
    stack = inference_stack
    publish_full(stack.model_dir, stack.adapters_path, "whole", seed=5, database_url=stack.database_url)
    with stack.client() as client:  # as the trainer asks: answered while the engine starts
        load = client.post("/v1/adapters/whole/load", params={"wait": "false"}, headers=stack.auth)
    assert load.status_code == 202, load.text
    assert load.json()["status"] == "starting" and load.json()["engine"]["application"] == "full-whole-v1"
    wait_for(lambda: _rows(stack)["whole"]["status"] == "served", seconds=600, what="the full model served")

    full = _predict(stack, {"items": ITEMS, "adapter": "whole"})
    base = _predict(stack, {"items": ITEMS, "adapter": "base"})
    assert [p["adapter"] for p in full] == ["whole", "whole"]
    assert all(abs(f["p_increase"] - b["p_increase"]) > 1e-3 for f, b in zip(full, base, strict=True))

    # One request mixing the base, an adapter and the full model keeps each item's own answer.
    mixed = _predict(
        stack,
        {"items": [{**ITEMS[0], "adapter": "whole"}, {**ITEMS[0], "adapter": "alpha"}, ITEMS[1]]},
    )
    alpha = _predict(stack, {"items": ITEMS[:1], "adapter": "alpha"})[0]
    assert [p["adapter"] for p in mixed] == ["whole", "alpha", "base"]
    assert mixed[0]["p_increase"] == pytest.approx(full[0]["p_increase"], abs=1e-6)
    assert mixed[1]["p_increase"] == pytest.approx(alpha["p_increase"], abs=1e-6)
    assert mixed[2]["p_increase"] == pytest.approx(base[1]["p_increase"], abs=1e-6)

    expected = _transformers_p_increase(stack.adapters_path / "whole" / "v1")
    for prediction, want in zip(full, expected, strict=True):
        assert prediction["p_increase"] == pytest.approx(want, abs=TOLERANCE)


def test_the_full_model_answers_the_openai_endpoints_by_name(inference_stack: Stack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{inference_stack.base_url}/v1", api_key="unused")
    cards = {model.id: model for model in client.models.list()}
    assert cards["whole"].model_extra["kind"] == "full" and cards["whole"].model_extra["status"] == "served"
    completion = client.completions.create(model="whole", prompt="Bitcoin", max_tokens=4, logprobs=2)
    base = client.completions.create(model="base", prompt="Bitcoin", max_tokens=4, logprobs=2)
    assert completion.model == "whole" and completion.usage.completion_tokens == 4
    assert completion.choices[0].logprobs.token_logprobs != base.choices[0].logprobs.token_logprobs
    chat = client.chat.completions.create(
        model="whole", messages=[{"role": "user", "content": "Will BTC rise?"}], max_tokens=4
    )
    assert chat.model == "whole" and chat.usage.completion_tokens >= 1


def test_a_full_model_that_does_not_fit_gets_409_naming_what_it_needs(inference_stack: Stack) -> None:
    stack = inference_stack
    publish_full(stack.model_dir, stack.adapters_path, "whole2", seed=9, database_url=stack.database_url)
    with stack.client() as client:
        load = client.post("/v1/adapters/whole2/load", headers=stack.auth)
    rows = _rows(stack)
    with session_scope(stack.database_url) as session:  # retired, so the poll does not start it later
        session.execute(update(Adapter).where(Adapter.name == "whole2").values(status="deleted"))
    assert load.status_code == 409
    assert "HSIG_MAX_FULL_MODELS" in load.json()["error"]["message"]
    assert rows["whole2"]["status"] == "waiting" and "HSIG_MAX_FULL_MODELS" in rows["whole2"]["reason"]
    assert rows["whole"]["status"] == "served"
    assert _predict(stack, {"items": ITEMS[:1], "adapter": "whole"})[0]["adapter"] == "whole"
    assert wait_for(lambda: "whole2" not in _rows(stack))


def test_delete_stops_the_full_models_engine(inference_stack: Stack) -> None:
    stack = inference_stack
    with stack.client() as client:
        assert client.delete("/v1/adapters/whole").status_code == 401  # auth required
        assert client.delete("/v1/adapters/whole", headers=stack.auth).status_code == 204
        gone = client.post("/v1/predict", json={"items": ITEMS[:1], "adapter": "whole"})
    assert gone.status_code == 404
    message = gone.json()["error"]["message"]
    assert "'whole' is not served" in message and "alpha" in message
    assert _rows(stack)["whole"]["status"] == "unloaded"
    from ray import serve

    assert not [name for name in serve.status().applications if name.startswith("full-")]


def _transformers_p_increase(model_dir: Path) -> list[float]:
    """p(Increase) of the same prompts from plain transformers on the published weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = [
        btc_trend_prompt(
            item["headline"], datetime.fromisoformat(item["published_at"].replace("Z", "+00:00"))
        )
        for item in ITEMS
    ]
    scored = score_with_transformers(model, tokenizer, prompts, TREND_LABELS, bos_id=bos_id_of(tokenizer))
    return [p_increase(probabilities) for probabilities in scored]
