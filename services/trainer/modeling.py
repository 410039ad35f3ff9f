"""Base models: where they come from, on which device and dtype, and how each method wraps them.

- The base is a preset name, a local directory or a Hugging Face id; with HF_HUB_OFFLINE=1
  an id that is not in the local cache is an InvalidInput naming the fix, raised before any
  data is read.
- lora: peft LoraConfig over the given target modules; qlora: the same over a 4-bit
  bitsandbytes base (CUDA only); full: every parameter trains.
- bf16 on a GPU, fp32 on a CPU (unless the config says otherwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import InvalidInput, OperationalError
from services.trainer.config import PRESETS, TINY_PRESET, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseModelRef:
    """Where to load the base from (a directory or an id) and what to call it in manifests."""

    load_from: str
    name: str


def resolve_base(base_model: str, models_path: Path) -> BaseModelRef:
    if base_model == TINY_PRESET:
        from services.common.tiny_model import build_tiny_model

        # Manifests record the directory, not the preset's name: the inference service serves an
        # adapter only when its recorded base is the model it runs, and a name would not match.
        directory = str(build_tiny_model(models_path / "tiny-llama").resolve())
        return BaseModelRef(directory, directory)
    if base_model in PRESETS:
        return BaseModelRef(PRESETS[base_model], PRESETS[base_model])
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidInput(f"base model directory {path} has no config.json", param="base_model")
        return BaseModelRef(str(path.resolve()), str(path.resolve()))
    if path.is_absolute() or base_model.startswith(".") or base_model.count("/") > 1:
        raise InvalidInput(f"base model directory {base_model} does not exist", param="base_model")
    return BaseModelRef(base_model, base_model)


def load_base_config(ref: BaseModelRef) -> Any:
    """The model's config.json (cheap): proves the base can be had before anything heavy runs."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.load_from)
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            f"base model {ref.load_from!r} is neither a local directory nor a Hugging Face id that "
            f"can be loaded here (offline mode or not in the cache: download it first, or pass a "
            f"directory or one of the presets {', '.join([TINY_PRESET, *PRESETS])}): {exc}",
            param="base_model",
        ) from exc


def check_lora_rank(model_config: Any, rank: int) -> None:
    """A rank above the smallest adapted dimension gains nothing and wastes memory: refuse it."""
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    heads = int(getattr(model_config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(model_config, "num_key_value_heads", 0) or heads)
    limit = hidden
    if hidden and heads:
        limit = min(hidden, kv_heads * (hidden // heads))  # v_proj's output is the smallest side
    if limit and rank > limit:
        raise InvalidInput(
            f"LoRA rank {rank} is larger than the model allows ({limit}: hidden size {hidden}, "
            f"{kv_heads} key/value heads)",
            param="lora.r",
        )


def pick_device(config: TrainConfig) -> tuple[str, str]:
    """(device, dtype name) for this host; QLoRA without CUDA is refused here."""
    import torch

    has_cuda = torch.cuda.is_available()
    if config.method.needs_gpu:
        if not has_cuda:
            # The request asks for what this host cannot do: the caller's to change (4xx), not a fault.
            raise InvalidInput(
                "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); this host has none: use method 'lora' or 'full'",
                param="method",
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise OperationalError("QLoRA needs bitsandbytes: pip install bitsandbytes") from exc
    if config.device == "cuda" and not has_cuda:
        raise InvalidInput(
            "device 'cuda' requested but this host has no CUDA device: use 'auto' or 'cpu'", param="device"
        )
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and has_cuda) else "cpu"
    dtype = ("bf16" if device == "cuda" else "fp32") if config.precision == "auto" else config.precision
    return device, dtype


def load_tokenizer(ref: BaseModelRef) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.load_from)
    if tokenizer.pad_token_id is None:  # Llama-2 has none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_for_training(config: TrainConfig, ref: BaseModelRef, device: str, dtype: str) -> Any:
    """The base wrapped for the method, on its device, seeded, ready for an optimizer."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if config.method.quantised:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # this rank's GPU under a launcher
    torch.manual_seed(config.optim.seed)
    model = AutoModelForCausalLM.from_pretrained(ref.load_from, **kwargs)
    if not config.method.quantised:  # 4-bit weights were placed on this rank's GPU as they loaded
        model.to(device)
    if config.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.method.trains_all_weights:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    return _wrap_lora(config, model)


def _wrap_lora(config: TrainConfig, model: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.method.quantised:
        # peft 0.21 re-enables checkpointing here with the kwargs it is given; without them
        # torch falls back to the reentrant variant (with a warning) and peft patches the
        # embeddings instead. Non-reentrant, as for lora and full.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.optim.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif config.optim.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.optim.seed)  # LoRA A matrices are drawn here
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise InvalidInput(f"LoRA target modules: {exc}", param="lora.target_modules") from exc


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as their logical size, not their packed bytes."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
