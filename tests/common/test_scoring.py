import math
from datetime import UTC, datetime

import pytest

from services.common.prompts import bos_id_of, btc_trend_prompt, encode_prompt_answer
from services.common.scoring import best_label, normalise, score_with_transformers


def test_normalise_is_a_softmax_over_sequence_logprobs() -> None:
    probabilities = normalise({"Increase": math.log(0.2), "Decrease": math.log(0.6)})
    assert probabilities == pytest.approx({"Increase": 0.25, "Decrease": 0.75})
    assert sum(normalise({"a": -1000.0, "b": -1001.0}).values()) == pytest.approx(1.0)
    assert best_label({"Increase": 0.5, "Decrease": 0.5}) == "Increase"


def test_transformers_scores_whole_label_sequences(tiny_model_dir) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [
        btc_trend_prompt(h, datetime(2020, 1, 1, tzinfo=UTC)) for h in ("Stocks rally", "Oil slumps hard")
    ]
    labels = ["Yes", "Unsure"]  # multi-token under the tiny tokenizer
    bos = bos_id_of(tokenizer)
    batched = score_with_transformers(model, tokenizer, prompts, labels, bos_id=bos, batch_size=4)

    # By hand: one forward pass per (prompt, label), summing every label token's log-probability.
    for prompt, scored in zip(prompts, batched, strict=True):
        manual = {}
        for label in labels:
            example = encode_prompt_answer(tokenizer, prompt, label, bos_id=bos)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            logprobs = torch.log_softmax(logits, dim=-1)
            manual[label] = sum(
                logprobs[pos - 1, example.input_ids[pos]].item()
                for pos in range(example.answer_start, len(example.input_ids))
            )
        assert scored == pytest.approx(normalise(manual), abs=1e-5)
    one_at_a_time = [score_with_transformers(model, tokenizer, [p], labels, bos_id=bos)[0] for p in prompts]
    for alone, together in zip(one_at_a_time, batched, strict=True):
        assert together == pytest.approx(alone, abs=1e-5)
