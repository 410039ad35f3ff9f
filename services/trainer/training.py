"""One training job end to end: validate, load, train, evaluate, publish, notify.

``prepare`` does every check that needs no weights (base model reachable, rank, device,
windows, classes, corpus lines) so a bad job fails before any training, with nothing
written; with ``data.packing`` it packs the training examples (services/trainer/loop.py).
``train`` is what the CLI, the job runner and the demo call. It writes TensorBoard events
(train loss and learning rate per step, validation loss per evaluation, the held-out scores at
the end) under the job's directory (services/trainer/events.py) and records gradient
checkpointing, packing and the validation history (best and last) in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.cutoffs import cutoff_for
from services.common.errors import InvalidInput
from services.common.prompts import EncodedExample, bos_id_of
from services.common.schemas import AdapterManifest, TrainingWindow
from services.common.scoring import best_label, score_with_transformers
from services.common.settings import get_settings
from services.trainer.config import TrainConfig
from services.trainer.datasets import DatasetSplit, Example, build_dataset
from services.trainer.distributed import Parallel
from services.trainer.events import EventWriter, tensorboard_dir_for
from services.trainer.loop import (
    LoopHooks,
    LoopResult,
    StepReport,
    TrainItem,
    encode_examples,
    mean_answer_loss,
    pack_examples,
    run_loop,
    total_steps_for,
)
from services.trainer.memory import read_peak, reset_peak, return_freed_memory_to_os
from services.trainer.modeling import (
    BaseModelRef,
    check_lora_rank,
    count_parameters,
    load_base_config,
    load_for_training,
    load_tokenizer,
    pick_device,
    resolve_base,
)
from services.trainer.publish import PublishedAdapter, notify_inference, publish, save_weights
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A job that passed every check, with its data encoded and its size known."""

    config: TrainConfig
    base: BaseModelRef
    device: str
    dtype: str
    dataset: DatasetSplit
    tokenizer: Any
    train_set: list[TrainItem]  # EncodedExample, or PackedBlock with data.packing
    validation_set: list[EncodedExample]  # never packed: one example per sequence
    total_steps: int
    fingerprint: str


def prepare(config: TrainConfig, settings: TrainerSettings | None = None) -> Prepared:
    settings = settings or get_settings(TrainerSettings)
    device, dtype = pick_device(config)  # QLoRA on a CPU host fails here, before anything else
    base = resolve_base(config.base_model, settings.models_path)
    model_config = load_base_config(base)
    if config.method.is_adapter:
        check_lora_rank(model_config, config.lora.r)
    dataset = build_dataset(
        config,
        settings.resolved_database_url,
        settings.symbol,
        settings.horizons[0] if settings.horizons else "1h",
    )
    tokenizer = load_tokenizer(base)
    with_eos = config.task == "chat"
    train_set, dropped = encode_examples(tokenizer, dataset.train, config.data.max_length, with_eos)
    validation_set, _ = encode_examples(tokenizer, dataset.validation, config.data.max_length, with_eos)
    if not train_set:
        raise InvalidInput(
            f"every training example is longer than max_length {config.data.max_length}",
            param="data.max_length",
        )
    dataset.notes["too_long_dropped"] = dropped
    items: list[TrainItem] = list(train_set)
    if config.data.packing:
        items = list(pack_examples(train_set, config.data.max_length))
        dataset.notes["packing"] = {
            "examples": len(train_set),
            "blocks": len(items),
            "max_length": config.data.max_length,
            "tokens": sum(len(e.input_ids) for e in train_set),
        }
    _, total = total_steps_for(config.optim, len(items))
    return Prepared(
        config,
        base,
        device,
        dtype,
        dataset,
        tokenizer,
        items,
        validation_set,
        total,
        _fingerprint(config, dataset),
    )


def _fingerprint(config: TrainConfig, dataset: DatasetSplit) -> str:
    """Resume only into the same job: same settings (checkpoint cadence aside) and data."""
    settings = config.model_dump(mode="json", exclude={"optim": {"checkpoint_every"}})
    return hashlib.sha256(json.dumps([settings, dataset.sha256()], sort_keys=True).encode()).hexdigest()


def train(
    config: TrainConfig,
    settings: TrainerSettings | None = None,
    checkpoint_dir: Path | None = None,
    hooks: LoopHooks | None = None,
    prepared: Prepared | None = None,
    tensorboard_dir: Path | None = None,
) -> PublishedAdapter:
    """Train, evaluate and publish one adapter (or full model); returns where it was published.

    With ``checkpoint_dir`` the run saves a checkpoint every ``optim.checkpoint_every`` steps
    and resumes from one left there by a killed run of the same job. TensorBoard events go to
    ``tensorboard_dir``, by default ``<data_dir>/jobs/<checkpoint_dir's name, or the adapter
    name>/tensorboard`` (``job-<id>`` for a queued job).
    """
    published = _train(config, settings, checkpoint_dir, hooks, prepared, Parallel(), tensorboard_dir)
    assert published is not None  # a single process is always the main one
    return published


def train_distributed(
    config: TrainConfig,
    settings: TrainerSettings | None = None,
    hooks: LoopHooks | None = None,
    prepared: Prepared | None = None,
    checkpoint_dir: Path | None = None,
    tensorboard_dir: Path | None = None,
) -> PublishedAdapter | None:
    """Under a launcher (accelerate launch, torchrun): every rank trains on its share of each
    batch, data-parallel or sharded (services.trainer.distributed); every rank evaluates, and
    the main rank publishes (and returns what it published), the others return None. With
    ``checkpoint_dir`` (one every rank reads) a relaunch of a killed job resumes."""
    parallel = Parallel.from_environment()
    try:
        parallel.check(config.method, config.optim.batch_size)
        main_hooks = hooks if parallel.is_main else None
        return _train(config, settings, checkpoint_dir, main_hooks, prepared, parallel, tensorboard_dir)
    finally:
        parallel.close()


def _train(
    config: TrainConfig,
    settings: TrainerSettings | None,
    checkpoint_dir: Path | None,
    hooks: LoopHooks | None,
    prepared: Prepared | None,
    parallel: Parallel,
    tensorboard_dir: Path | None = None,
) -> PublishedAdapter | None:
    settings = settings or get_settings(TrainerSettings)
    job = prepared or prepare(config, settings)
    events_dir = tensorboard_dir or tensorboard_dir_for(
        settings, checkpoint_dir.name if checkpoint_dir is not None else config.name
    )
    writer = EventWriter(events_dir) if parallel.is_main else None  # one writer per job
    try:
        return _train_and_publish(config, settings, checkpoint_dir, hooks, job, parallel, writer)
    finally:
        if writer is not None:
            writer.close()


def _event_hooks(hooks: LoopHooks | None, writer: EventWriter | None) -> LoopHooks | None:
    """The caller's hooks, with every step and evaluation also written to the event file."""
    if writer is None:
        return hooks
    given = hooks or LoopHooks()

    def on_step(report: StepReport) -> None:
        writer.scalars(report.step, {"train/loss": report.loss, "train/learning_rate": report.learning_rate})
        if given.on_step:
            given.on_step(report)

    def on_eval(step: int, loss: float) -> None:
        writer.scalars(step, {"validation/loss": loss})
        if given.on_eval:
            given.on_eval(step, loss)

    return LoopHooks(
        on_step=on_step, should_stop=given.should_stop, on_checkpoint=given.on_checkpoint, on_eval=on_eval
    )


def _train_and_publish(
    config: TrainConfig,
    settings: TrainerSettings,
    checkpoint_dir: Path | None,
    hooks: LoopHooks | None,
    job: Prepared,
    parallel: Parallel,
    writer: EventWriter | None,
) -> PublishedAdapter | None:
    if job.device == "cpu" and settings.return_freed_memory:
        return_freed_memory_to_os()
    reset_peak(job.device)
    model = load_for_training(config, job.base, job.device, job.dtype)
    trainable, total = count_parameters(model)
    log.info(
        "%s on %s (%s): %d of %d parameters train", config.method, job.device, job.dtype, trainable, total
    )
    pad_id = job.tokenizer.pad_token_id
    # Every rank evaluates: a sharded model's forward needs all of them (the same batches on
    # each, so the figures agree); then the shards are gathered for the main rank to save.
    result = run_loop(
        model,
        job.train_set,
        config.optim,
        pad_id,
        checkpoint_dir,
        job.fingerprint,
        _event_hooks(hooks, writer),
        parallel,
        evaluate=lambda: mean_answer_loss(model, job.validation_set, pad_id),
    )
    evaluation = evaluate_labels(model, job) if config.evaluate_accuracy and job.dataset.labels else None
    if writer is not None and evaluation is not None:
        writer.scalars(
            result.steps,
            {f"eval/{key}": evaluation[key] for key in ("accuracy", "majority_baseline")},
        )
    state = parallel.full_state_dict(model)
    if not parallel.is_main:
        parallel.wait()  # the main rank publishes
        return None
    peak_bytes, peak_kind = read_peak(job.device)
    manifest = _manifest(job, result, trainable, total, peak_bytes, peak_kind)
    # What the base could have read (services/common/cutoffs.py): backtests split rows by it.
    manifest.base_model_cutoff = cutoff_for(job.base.name, settings.model_cutoffs, config.base_model_cutoff)
    manifest.extra.update(
        {
            **validation_record(result, config.optim.eval_steps),
            "evaluation": evaluation,
            "processes": parallel.world,
            "parallelism": parallel.strategy,
            "tensorboard_dir": str(writer.path.parent) if writer is not None else None,
        }
    )
    published = publish(
        settings.resolved_database_url,
        settings.adapters_path,
        manifest,
        lambda directory: save_weights(
            model, job.tokenizer, directory, full=config.method.carries_tokenizer, state_dict=state
        ),
        training_config=config.model_dump(mode="json"),
    )
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the job is done: nothing to resume
    notify_inference(
        settings.inference_url,
        settings.api_token,
        published.name,
        settings.notify_timeout_seconds,
        # A full model's own engine takes minutes to start on a GPU: ask, and do not wait for it.
        wait=config.method.wait_for_load,
    )
    parallel.wait()
    return published


def validation_record(result: LoopResult, eval_steps: int | None) -> dict[str, Any]:
    """The manifest's validation-loss fields: before and after (as always), and the history of
    evaluations during training with its best and last entries."""
    history = [{"step": step, "loss": loss} for step, loss in result.evaluations]
    scored = [entry for entry in history if entry["loss"] == entry["loss"]]  # NaN: empty set
    before = next((entry["loss"] for entry in history if entry["step"] == 0), float("nan"))
    return {
        "validation_loss_before": before,
        "validation_loss_after": history[-1]["loss"] if history else float("nan"),
        "validation": {
            "eval_steps": eval_steps,
            "history": history,
            "best": min(scored, key=lambda entry: entry["loss"]) if scored else None,
            "last": history[-1] if history else None,
        },
    }


def evaluate_labels(model: Any, job: Prepared) -> dict[str, Any]:
    """Held-out accuracy by label scoring (services.common.scoring), with the majority baseline."""
    window = "test" if job.dataset.test else "validation"
    examples: list[Example] = (job.dataset.test or job.dataset.validation)[: job.config.max_eval_examples]
    labels = list(job.dataset.labels)
    probabilities = score_with_transformers(
        model, job.tokenizer, [e.prompt for e in examples], labels, bos_id=bos_id_of(job.tokenizer)
    )
    predicted = [best_label(p) for p in probabilities]
    truth = [e.answer for e in examples]
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    majority = Counter(truth).most_common(1)[0][1] if truth else 0
    return {
        "window": window,
        "rows": len(examples),
        "accuracy": correct / len(examples) if examples else None,
        "majority_baseline": majority / len(examples) if examples else None,
        "predicted_share": {label: predicted.count(label) / len(predicted) for label in labels}
        if predicted
        else {},
    }


def _manifest(
    job: Prepared, result: LoopResult, trainable: int, total: int, peak_bytes: int, peak_kind: str
) -> AdapterManifest:
    import peft
    import torch
    import transformers

    config, dataset = job.config, job.dataset
    return AdapterManifest(
        name=config.name,
        base_model=job.base.name,
        method=config.method,
        task=config.task,
        lora=config.lora if config.method.is_adapter else None,
        training_window=TrainingWindow(
            first_row_time=dataset.first_row_time,
            last_row_time=dataset.last_row_time,
            embargo_seconds=dataset.embargo_seconds,
        ),
        dataset_sha256=dataset.sha256(),
        train_seconds=result.train_seconds,
        seconds_per_epoch=result.seconds_per_epoch,
        peak_memory_bytes=peak_bytes,
        peak_memory_kind=peak_kind,  # type: ignore[arg-type]
        trainable_parameters=trainable,
        total_parameters=total,
        tokens_per_second=result.tokens_per_second,
        extra={
            "steps": result.steps,
            "epochs": result.epochs,
            "resumed_from_step": result.resumed_from_step,
            "final_train_loss": result.losses[-1] if result.losses else None,
            "gradient_checkpointing": config.optim.gradient_checkpointing,
            "packing": config.data.packing,
            "device": job.device,
            "dtype": job.dtype,
            "examples": {
                "train": len(dataset.train),
                "validation": len(dataset.validation),
                "test": len(dataset.test),
            },
            "class_balance": dataset.class_balance,
            "notes": dataset.notes,
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
        },
    )
