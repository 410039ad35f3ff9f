"""QLoRA trains under bf16 autocast, everything else in its own dtype.

The 4-bit path itself needs CUDA (bench/gpu_trainer_check.py runs it on a GPU); what is
checked here is the switch: a peft model over a base flagged 4-bit, as transformers flags a
bitsandbytes model, is seen as such through peft's wrappers, and its forward runs in bf16.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from services.trainer.loop import compute_autocast


def _lora(base: torch.nn.Module) -> torch.nn.Module:
    return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def test_a_4bit_model_behind_peft_runs_its_forward_in_bf16(tiny_model_dir: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base.is_loaded_in_4bit = True  # what transformers sets on a bitsandbytes 4-bit model
    model = _lora(base)
    ids = torch.tensor([[1, 5, 6, 7]])
    with compute_autocast(model):
        logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16


def test_other_models_keep_their_own_dtype(tiny_model_dir: Path) -> None:
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    with compute_autocast(model):
        logits = model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits
    assert logits.dtype == torch.float32
