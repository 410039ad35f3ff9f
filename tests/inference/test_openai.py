"""The OpenAI-compatible endpoints, driven by the official ``openai`` client."""

from __future__ import annotations

import math

import openai
import pytest

from tests.inference.conftest import TOKEN, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(inference_stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{inference_stack.base_url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


def test_models_lists_the_base_and_every_served_adapter(
    client: openai.OpenAI, inference_stack: Stack
) -> None:
    models = {model.id: model for model in client.models.list()}
    base = inference_stack.model_dir.name
    assert {base, "alpha", "beta", "gamma", "hate"} <= set(models)
    assert models["alpha"].model_extra["parent"] == base
    assert models[base].model_extra["parent"] is None
    # The tiny base read nothing outside this project, and its adapters inherit that (issue 15).
    assert models[base].model_extra["knowledge_cutoff"]["status"] == "none"
    assert models["alpha"].model_extra["knowledge_cutoff"]["status"] == "none"


@pytest.mark.parametrize("model", ["alpha", "base"])
def test_completion_with_logprobs_is_deterministic_at_temperature_zero(
    client: openai.OpenAI, model: str
) -> None:
    kwargs = {
        "model": model,
        "prompt": "Bitcoin price today",
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": 3,
    }
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    choice = first.choices[0]
    assert choice.text == second.choices[0].text
    assert first.usage.completion_tokens == len(choice.logprobs.tokens) == 6
    assert choice.finish_reason == "length"
    if "\ufffd" not in choice.text:  # byte-level tokens may split a character; then text has U+FFFD
        assert "".join(choice.logprobs.tokens) == choice.text
    for token_logprob, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs, strict=True):
        assert token_logprob <= 0 and math.isfinite(token_logprob)
        assert 1 <= len(top) <= 4  # the top 3 plus the chosen token when it is not among them
        assert token_logprob >= max(top.values()) - 1e-5  # greedy picked the most likely token


def test_adapters_change_what_is_generated(client: openai.OpenAI) -> None:
    def logprob_of_first(model: str) -> float:
        out = client.completions.create(
            model=model, prompt="Markets", max_tokens=1, temperature=0, logprobs=1
        )
        return out.choices[0].logprobs.token_logprobs[0]

    assert abs(logprob_of_first("alpha") - logprob_of_first("beta")) > 1e-4


def test_stop_strings_end_the_completion(client: openai.OpenAI) -> None:
    free = client.completions.create(model="alpha", prompt="Bitcoin", max_tokens=12, temperature=0)
    text = free.choices[0].text
    if len(text.strip()) < 2:
        pytest.fail(f"the tiny model generated too little text to test stop strings: {text!r}")
    stop = text.strip()[1]
    stopped = client.completions.create(
        model="alpha", prompt="Bitcoin", max_tokens=12, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].text
    assert text.startswith(stopped.choices[0].text)


def test_chat_completion_applies_the_chat_template(client: openai.OpenAI, inference_stack: Stack) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Will bitcoin rise?"}]
    reply = client.chat.completions.create(
        model="alpha", messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert len(choice.logprobs.content) == reply.usage.completion_tokens
    assert all(len(entry.top_logprobs) >= 1 for entry in choice.logprobs.content)
    tokenizer = AutoTokenizer.from_pretrained(inference_stack.model_dir)
    templated = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert templated.startswith("<s>[INST] <<SYS>>")
    assert reply.usage.prompt_tokens == len(tokenizer.encode(templated, add_special_tokens=False))
    # The same text through /v1/completions (which adds BOS itself) gives the same answer.
    raw = client.completions.create(
        model="alpha", prompt=templated.removeprefix("<s>"), max_tokens=5, temperature=0
    )
    assert raw.choices[0].text == choice.message.content


def test_unknown_model_is_a_404_naming_the_served_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    assert "alpha" in str(caught.value) and "beta" in str(caught.value)


def test_max_tokens_above_the_limit_is_a_400(client: openai.OpenAI, inference_stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            model="alpha", prompt="x", max_tokens=inference_stack.settings.max_completion_tokens + 1
        )
    assert "max_tokens" in str(caught.value)
