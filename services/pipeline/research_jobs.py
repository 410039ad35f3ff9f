"""What the research questions share: one trainer job per method, checked before any trains,
and the published models loaded back for evaluation and greedy generation.

Every fine-tune goes through the trainer (``services.trainer.training``) exactly as
``hsig backtest reproduce`` does, so manifests, publishing and costs are the trainer's own.
QLoRA needs CUDA and bitsandbytes: where the trainer refuses it, the method is recorded as
not run with the trainer's reason, and nothing stands in for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.common.errors import InvalidInput, OperationalError
from services.common.methods import TrainingMethod
from services.pipeline.reproduce import default_learning_rate

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
METHOD_LABELS = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}


@dataclass(frozen=True)
class JobSettings:
    """How each fine-tune of one question trains (the same for every method)."""

    model: str = "tiny"
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0


@dataclass
class MethodRun:
    """One method's fine-tune: published, or not run with the reason."""

    method: str
    prepared: Any = None  # services.trainer.training.Prepared
    published: Any = None  # services.trainer.publish.PublishedAdapter
    reason: str | None = None
    config: Any = None

    @property
    def ran(self) -> bool:
        return self.published is not None


@dataclass
class Plan:
    """Every method checked, the data loaded once (``probe``: the split every method shares)."""

    probe: Any  # Prepared of a LoRA job on the same data: dataset, tokenizer, base
    runs: list[MethodRun] = field(default_factory=list)


def is_tiny(model: str) -> bool:
    """The tiny local model, by preset name or by the stamp its directory carries."""
    return model == "tiny" or (Path(model) / "tiny_model_stamp.json").is_file()


def parse_methods(methods: Sequence[str]) -> tuple[TrainingMethod, ...]:
    chosen = []
    for name in methods:
        try:
            chosen.append(TrainingMethod(name.strip().lower()))
        except ValueError as exc:
            raise InvalidInput(f"method {name!r} is not lora, qlora or full", param="methods") from exc
    if not chosen:
        raise InvalidInput("no method given (lora, qlora, full)", param="methods")
    return tuple(dict.fromkeys(chosen))  # in the order given, once each


def train_config(
    name: str, task: str, method: TrainingMethod, data: dict[str, Any], jobs: JobSettings, **extra: Any
) -> Any:
    """The trainer's TrainConfig, a validation error as one InvalidInput naming the field."""
    from services.trainer.config import TrainConfig

    rate = default_learning_rate(method, is_tiny(jobs.model))
    raw = {
        "name": name,
        "task": task,
        "base_model": jobs.model,
        "method": method.value,
        "data": {"max_length": jobs.max_length, **data},
        "optim": {
            "epochs": jobs.epochs,
            "max_steps": jobs.max_steps,
            "batch_size": jobs.batch_size,
            "learning_rate": rate,
            "seed": jobs.seed,
        },
        **extra,
    }
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise InvalidInput(f"{where}: {first['msg']}", param=where) from exc


def plan_jobs(configs: dict[TrainingMethod, Any], settings: Any) -> Plan:
    """Every check the trainer makes, for every method, before any weights load: bad data is an
    InvalidInput here. A method this host cannot run (QLoRA without CUDA) is kept as not run."""
    from services.trainer.modeling import pick_device
    from services.trainer.training import prepare

    any_config = next(iter(configs.values()))
    probe = prepare(any_config.model_copy(update={"method": TrainingMethod.LORA}), settings)
    plan = Plan(probe=probe)
    for method, config in configs.items():
        run = MethodRun(method=method.value, config=config)
        try:
            pick_device(config)
        except (InvalidInput, OperationalError) as exc:
            if not method.needs_gpu:
                raise
            run.reason = exc.message  # the trainer's own words
        else:
            run.prepared = probe if method is TrainingMethod.LORA else prepare(config, settings)
        plan.runs.append(run)
    return plan


def plan_methods(
    question: str,
    task: str,
    methods: Sequence[TrainingMethod],
    data: dict[str, Any],
    jobs: JobSettings,
    settings: Any,
    **extra: Any,
) -> Plan:
    """One trainer job per method on ``data``, named ``research-<question>-<method>``, every one
    checked (``plan_jobs``) before any trains."""
    configs = {
        method: train_config(f"research-{question}-{method}", task, method, data, jobs, **extra)
        for method in methods
    }
    return plan_jobs(configs, settings)


def run_jobs(plan: Plan, settings: Any, say: Progress) -> None:
    """Train and publish each runnable method, one after the other."""
    from services.trainer.training import train

    for run in plan.runs:
        if run.reason is not None:
            say(f"research: {run.config.name}: not run: {run.reason}")
            continue
        say(f"research: {run.config.name}: {run.method} fine-tuning ({run.prepared.total_steps} steps) ...")
        run.published = train(run.config, settings, prepared=run.prepared)
        manifest = run.published.manifest
        say(
            f"research: {run.config.name}: done in {manifest.train_seconds:.1f} s, "
            f"{manifest.trainable_parameters:,} of {manifest.total_parameters:,} parameters trained"
        )


def cost_of(run: MethodRun) -> dict[str, Any]:
    """The note's efficiency figures, from the published manifest."""
    if not run.ran:
        return {}
    manifest = run.published.manifest
    return {
        "train_seconds": manifest.train_seconds,
        "seconds_per_epoch": manifest.seconds_per_epoch,
        "peak_memory_bytes": manifest.peak_memory_bytes,
        "peak_memory_kind": manifest.peak_memory_kind,
        "trainable_parameters": manifest.trainable_parameters,
        "total_parameters": manifest.total_parameters,
        "tokens_per_second": manifest.tokens_per_second,
        "steps": manifest.extra.get("steps"),
        "published": f"{manifest.name} v{run.published.version}",
        "path": str(run.published.path),
    }


# --- models back for evaluation ------------------------------------------------------------

Evaluate = Callable[[Any], dict[str, Any]]  # a loaded model -> its figures for the section's JSON


def train_and_evaluate(
    plan: Plan, settings: Any, say: Progress, doing: str, evaluate: Evaluate
) -> list[dict[str, Any]]:
    """Train each runnable method (``run_jobs``), then ``evaluate`` the untuned base and every
    fine-tune, one model in memory at a time. The rows: the base's first, then one per
    ``plan.runs`` in its order, with the trainer's reason where the method did not run, else
    its figures, cost and data sha256. ``doing`` opens the progress lines ("research qa:
    evaluating")."""
    run_jobs(plan, settings, say)
    base_dir = plan.probe.base.load_from
    say(f"{doing} the untuned base ...")
    base = _evaluated(lambda: load_base(base_dir), evaluate)
    rows = [{"model": "base (untuned)", "method": "base", "status": "ok", **base}]
    return rows + [_method_row(run, base_dir, say, doing, evaluate) for run in plan.runs]


def _method_row(
    run: MethodRun, base_dir: str, say: Progress, doing: str, evaluate: Evaluate
) -> dict[str, Any]:
    label = METHOD_LABELS[run.method]
    if not run.ran:
        return {"model": label, "method": run.method, "status": "not run", "reason": run.reason}
    say(f"{doing} {label} ...")
    figures = _evaluated(lambda: load_published(base_dir, run), evaluate)
    return {
        "model": label,
        "method": run.method,
        "status": "ok",
        **figures,
        "cost": cost_of(run),
        "dataset_sha256": run.published.manifest.dataset_sha256,
    }


def _evaluated(load: Callable[[], Any], evaluate: Evaluate) -> dict[str, Any]:
    """``evaluate`` on the model ``load`` returns, then its memory given back: the model is
    loaded here so that this frame holds its only reference (13B does not fit twice)."""
    model = load()
    figures = evaluate(model)
    del model
    release()
    return figures


def device_and_dtype() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_base(base_dir: str) -> Any:
    from transformers import AutoModelForCausalLM

    device, dtype = device_and_dtype()
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, use_safetensors=True).to(device)


def load_published(base_dir: str, run: MethodRun) -> Any:
    """A published fine-tune as it will be served: a full model alone, an adapter on its base
    (QLoRA's on the 4-bit base it was trained on)."""
    from transformers import AutoModelForCausalLM

    method = TrainingMethod(run.method)
    path = Path(run.published.path)
    device, dtype = device_and_dtype()
    try:
        if not method.is_adapter:
            return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True).to(
                device
            )
        kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
        if method.quantised:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
            )
            kwargs["device_map"] = {"": 0}
        base = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
        if not method.quantised:
            base = base.to(device)
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(path))
    except OSError as exc:
        raise OperationalError(f"cannot load {path}: {exc}") from exc


def greedy(model: Any, tokenizer: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt_ids`` (no sampling: the same answer on every run)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], device=device)
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


def release() -> None:
    """Return a dropped model's memory before the next loads (13B does not fit twice)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
