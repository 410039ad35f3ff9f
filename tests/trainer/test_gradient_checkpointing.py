"""optim.gradient_checkpointing through the trainer's own model loading (modeling.load_for_training):
the decoder layers really recompute in backward, LoRA's weights still get their gradients
(frozen embeddings: peft needs input grads or non-reentrant checkpointing), and the loss and
gradients are those of the same step without checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.datasets import load_rows_from_file, trend_split
from services.trainer.loop import answer_loss, collate, encode_examples
from services.trainer.modeling import BaseModelRef, load_for_training, load_tokenizer
from tests.trainer.conftest import FULL_OPTIM, lora_config


def _one_step(method: str, checkpointing: bool, rows: Path, tiny: Path) -> tuple[float, dict, int]:
    """(loss, gradients by parameter name, forward calls of the first decoder layer)."""
    optim = {**(FULL_OPTIM if method == "full" else {}), "gradient_checkpointing": checkpointing}
    config = lora_config(rows, tiny, method=method, optim=optim)
    base = BaseModelRef(str(tiny), str(tiny))
    tokenizer = load_tokenizer(base)
    split = trend_split(load_rows_from_file(rows), config.data)
    examples, _ = encode_examples(tokenizer, split.train[:8], 512, with_eos=False)
    model = load_for_training(config, base, "cpu", "fp32")
    model.train()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert inner.is_gradient_checkpointing is checkpointing
    calls = []
    # A pre-hook: torch's recomputation stops early, once it has what backward needs, so a
    # forward hook (which runs after the layer) would not see the second run.
    inner.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    loss = answer_loss(model, collate(examples, tokenizer.pad_token_id))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    return float(loss.detach()), grads, len(calls)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_checkpointing_recomputes_and_changes_no_gradient(
    method: str, planted_file: Path, tiny_model_dir: Path
) -> None:
    loss_off, grads_off, calls_off = _one_step(method, False, planted_file, tiny_model_dir)
    loss_on, grads_on, calls_on = _one_step(method, True, planted_file, tiny_model_dir)
    assert (calls_off, calls_on) == (1, 2)  # the layer runs again in backward
    assert loss_on == pytest.approx(loss_off, abs=1e-6)
    assert grads_on.keys() == grads_off.keys()
    # LoRA's B starts at zero, so at the first step only B has a gradient (A's is B^T times
    # something). The classic failure is B's gradient missing too: nothing would learn.
    lora_b = [name for name in grads_on if "lora_B" in name]
    assert (method == "lora") == bool(lora_b)
    for name in lora_b:
        assert float(grads_on[name].abs().sum()) > 0, name
    for name in grads_on:
        assert (grads_on[name] - grads_off[name]).abs().max() <= 1e-5, name
