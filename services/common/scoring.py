"""Label scoring: p(label) from the log-probability of the label's whole token sequence.

One definition for every engine (vLLM in inference, plain transformers/peft in the trainer's
evaluation and the backtest's local predictor): sum the log-probabilities of the label's
tokens after the prompt, then normalise over the labels with a softmax. Multi-token labels
are scored as whole sequences, never by their first token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from services.common.prompts import INCREASE, Tokenizer, encode_prompt_answer


def normalise(label_logprobs: Mapping[str, float]) -> dict[str, float]:
    """Softmax over the labels' sequence log-probabilities (numerically stable)."""
    if not label_logprobs:
        raise ValueError("no labels to normalise")
    top = max(label_logprobs.values())
    weights = {label: math.exp(value - top) for label, value in label_logprobs.items()}
    total = sum(weights.values())
    return {label: weight / total for label, weight in weights.items()}


def best_label(probabilities: Mapping[str, float]) -> str:
    # Ties go to the label listed first, so the answer never depends on dict iteration luck.
    return max(probabilities, key=lambda label: (probabilities[label], -list(probabilities).index(label)))


def p_increase(probabilities: Mapping[str, float]) -> float:
    return float(probabilities.get(INCREASE, 0.0))


def score_with_transformers(
    model: Any,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    labels: Sequence[str],
    bos_id: int | None = None,
    adapter_names: Sequence[str] | None = None,
    batch_size: int = 16,
) -> list[dict[str, float]]:
    """p(label | prompt) for each prompt with a transformers or peft model, in batches.

    ``adapter_names`` (peft only) scores each prompt with its own adapter in the same batch
    ("__base__" for the base model). Returns one {label: probability} per prompt.
    """
    import torch

    examples = [
        (index, label, encode_prompt_answer(tokenizer, prompt, label, bos_id=bos_id))
        for index, prompt in enumerate(prompts)
        for label in labels
    ]
    sums: list[dict[str, float]] = [{} for _ in prompts]
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        width = max(len(example.input_ids) for _, _, example in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, _, example) in enumerate(chunk):  # right padding keeps positions as scored alone
            ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
            mask[row, : len(example.input_ids)] = 1
        kwargs: dict[str, Any] = {}
        if adapter_names is not None:
            kwargs["adapter_names"] = [adapter_names[index] for index, _, _ in chunk]
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, (index, label, example) in enumerate(chunk):
            positions = range(example.answer_start, len(example.input_ids))
            sums[index][label] = float(
                sum(logprobs[row, pos - 1, example.input_ids[pos]].item() for pos in positions)
            )
    return [normalise(label_sums) for label_sums in sums]
