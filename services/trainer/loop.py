"""The training loop: answer-only loss, seeded data order, checkpoints every N steps, resume.

A plain PyTorch loop rather than ``transformers.Trainer``: the job needs to report every step
to the queue, stop on a cancel between steps, and resume bit-for-bit from a checkpoint that
holds only what trains (LoRA weights or the full model), the optimizer, the scheduler, the
RNG states and the step. The data order of epoch e is a permutation seeded by (seed, e), so a
resumed run sees exactly the batches the killed one would have.

Packing (``data.packing``, chat only): short examples are laid end to end in blocks of at most
``data.max_length`` tokens (``pack_examples``). Each block's position ids restart at every
example, and the model is called without an attention mask: transformers (pinned 5.19)
then builds a block-diagonal causal mask from the position ids (``find_packed_sequence_indices``
in masking_utils, honoured by sdpa and eager attention alike), so no token attends to another
example. The loss falls on the same answer tokens as without packing.

Validation during training: with an ``evaluate`` callable, the loop scores the validation set
before the first step (a fresh run), every ``optim.eval_steps`` steps, and after the last step;
the history is part of the checkpoint, so a resumed run reports the whole of it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.prompts import EncodedExample, bos_id_of, encode_prompt_answer
from services.trainer.config import OptimConfig
from services.trainer.datasets import Example
from services.trainer.distributed import Parallel

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # transformers' cross-entropy skips these positions: the prompt and padding
CHECKPOINT_FILE = "checkpoint.pt"


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], max_length: int, with_eos: bool
) -> tuple[list[EncodedExample], int]:
    """Token ids through the shared prompt module; returns (encoded, how many had to be dropped)."""
    bos = bos_id_of(tokenizer)
    eos = tokenizer.eos_token_id if with_eos else None
    encoded, dropped = [], 0
    for example in examples:
        item = encode_prompt_answer(tokenizer, example.prompt, example.answer, bos_id=bos, eos_id=eos)
        if item.answer_start >= max_length:  # the prompt alone fills the budget: no answer to learn
            dropped += 1
            continue
        encoded.append(EncodedExample(item.input_ids[:max_length], item.answer_start))
    return encoded, dropped


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-padded ids, attention mask, and labels that are IGNORE_INDEX except on answers."""
    import torch

    width = max(len(item.input_ids) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item.input_ids)
        ids[row, :length] = torch.tensor(item.input_ids)
        mask[row, :length] = 1
        labels[row, item.answer_start : length] = ids[row, item.answer_start : length]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass(frozen=True)
class PackedBlock:
    """Several encoded examples end to end; ``segments`` holds (start, answer_start, end) of
    each, as offsets into ``input_ids``."""

    input_ids: list[int]
    segments: tuple[tuple[int, int, int], ...]


TrainItem = EncodedExample | PackedBlock


def pack_examples(examples: Sequence[EncodedExample], max_length: int) -> list[PackedBlock]:
    """Next-fit in the given order: an example joins the current block while the block stays
    within ``max_length`` tokens (each example is already at most that long)."""
    blocks: list[PackedBlock] = []
    ids: list[int] = []
    segments: list[tuple[int, int, int]] = []
    for item in examples:
        if ids and len(ids) + len(item.input_ids) > max_length:
            blocks.append(PackedBlock(ids, tuple(segments)))
            ids, segments = [], []
        start = len(ids)
        ids = ids + list(item.input_ids)
        segments.append((start, start + item.answer_start, len(ids)))
    if ids:
        blocks.append(PackedBlock(ids, tuple(segments)))
    return blocks


def collate_packed(batch: Sequence[PackedBlock], pad_id: int) -> dict[str, Any]:
    """Right-padded blocks with position ids that restart at each example (and at the padding,
    which so forms a segment of its own that no real token can see: it comes after them all),
    labels on each example's answer tokens, and no attention mask (see the module docstring)."""
    import torch

    width = max(len(block.input_ids) for block in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, block in enumerate(batch):
        length = len(block.input_ids)
        ids[row, :length] = torch.tensor(block.input_ids)
        for start, answer_start, end in block.segments:
            positions[row, start:end] = torch.arange(end - start)
            labels[row, answer_start:end] = ids[row, answer_start:end]
        positions[row, length:] = torch.arange(width - length)
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def collate_items(batch: Sequence[TrainItem], pad_id: int) -> dict[str, Any]:
    if batch and isinstance(batch[0], PackedBlock):
        return collate_packed(batch, pad_id)  # type: ignore[arg-type]
    return collate(batch, pad_id)  # type: ignore[arg-type]


@dataclass
class StepReport:
    step: int  # optimizer steps done
    total_steps: int
    loss: float
    elapsed_seconds: float
    learning_rate: float | None = None  # the rate this step was taken with
    validation_loss: float | None = None  # the latest evaluation's, if any


@dataclass
class LoopHooks:
    on_step: Callable[[StepReport], None] | None = None
    should_stop: Callable[[], bool] | None = None  # polled after every step (cancel)
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_eval: Callable[[int, float], None] | None = None  # (step, validation loss)


class Stopped(Exception):
    """The loop stopped because should_stop said so; the last checkpoint is kept."""


@dataclass
class LoopResult:
    steps: int
    total_steps: int
    steps_per_epoch: int
    train_seconds: float
    tokens: int
    losses: list[float] = field(default_factory=list)
    resumed_from_step: int = 0
    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / self.epochs if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0


def total_steps_for(optim: OptimConfig, train_size: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps)."""
    steps_per_epoch = max(1, math.ceil(train_size / optim.batch_size))
    total = optim.max_steps or max(1, math.ceil(optim.epochs * steps_per_epoch))
    return steps_per_epoch, total


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over the answer tokens, computing the output layer only where an
    answer token is predicted. A btc-trend example has one or two answer tokens among about
    ninety: projecting every position onto the vocabulary (32,000 wide for Llama-2) would cost
    memory and time for logits the loss ignores. Same value as transformers' own loss."""
    import torch

    labels = batch["labels"]
    targets_next = labels[:, 1:]  # position t predicts token t + 1
    positions = (targets_next != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # union over the batch
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    # No cache in training; a packed batch also needs none for its mask (masking_utils builds
    # the per-example mask only when no cache is passed).
    logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits
    targets = targets_next[:, positions]
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def _schedule(optim: OptimConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / (optim.warmup_steps + 1)
        progress = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
        if optim.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if optim.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def _epoch_order(seed: int, epoch: int, size: int) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write aside and rename: a kill mid-write leaves the previous checkpoint intact."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / CHECKPOINT_FILE
    staging = directory / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    torch.save(state, staging)
    os.replace(staging, final)
    return final


def load_checkpoint(
    directory: Path | None, fingerprint: str, layout: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The checkpoint a killed run of this job left, or None. ``layout``: the strategy and
    process count it must have been written by (each rank resumes its own RNG stream)."""
    import torch

    if directory is None or not (directory / CHECKPOINT_FILE).is_file():
        return None
    state = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint in %s belongs to another configuration; starting afresh", directory)
        return None
    layout = layout or Parallel().layout
    if state.get("layout") != layout:
        log.warning(
            "checkpoint in %s was written by %s, this run is %s; starting afresh",
            directory,
            state.get("layout"),
            layout,
        )
        return None
    return state


def compute_autocast(model: Any) -> Any:
    """bf16 autocast for a 4-bit (QLoRA) model, a no-op context otherwise.

    peft's ``prepare_model_for_kbit_training`` casts the embeddings, norms and output layer to
    fp32 for stable training, so without autocast the 4-bit layers' outputs and much of what
    the backward pass keeps are fp32. This is what ``transformers.Trainer(bf16=True)`` does
    around the forward pass; on an H200 it took the 7B shape from 21.1 to 20.1 GiB and 0.242
    to 0.227 s/step, 13B from 33.8 to 32.3 GiB and 0.404 to 0.345 s/step (docs/benchmarks.md)."""
    import contextlib

    import torch

    if not getattr(model, "is_loaded_in_4bit", False):
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def run_loop(
    model: Any,
    train_set: Sequence[TrainItem],
    optim: OptimConfig,
    pad_id: int,
    checkpoint_dir: Path | None,
    fingerprint: str,
    hooks: LoopHooks | None = None,
    parallel: Parallel | None = None,
    evaluate: Callable[[], float] | None = None,
) -> LoopResult:
    """Train to ``total_steps``; with ``evaluate`` (the validation loss of the model being
    trained) also at step 0, every ``optim.eval_steps`` and at the end (see the module docstring)."""
    import torch

    hooks = hooks or LoopHooks()
    parallel = parallel or Parallel()
    device = next(model.parameters()).device
    steps_per_epoch, total = total_steps_for(optim, len(train_set))
    model = parallel.wrap(model)  # before the optimizer: FSDP replaces the parameters with shards
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=optim.learning_rate, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(optim, total))
    result = LoopResult(0, total, steps_per_epoch, 0.0, 0)
    state = load_checkpoint(checkpoint_dir, fingerprint, parallel.layout)
    if state is not None:
        _restore(model, optimizer, scheduler, state, result, parallel)
        log.info("resumed from the checkpoint at step %d of %d", result.steps, total)
    else:
        if evaluate is not None:  # before seeding: evaluation draws no random numbers anyway
            _evaluate(0, evaluate, result, hooks)
        torch.manual_seed(optim.seed)
    model.train()
    autocast = compute_autocast(model)
    started = time.perf_counter() - result.train_seconds
    while result.steps < total:
        epoch, index = divmod(result.steps, steps_per_epoch)
        order = _epoch_order(optim.seed, epoch, len(train_set))
        chosen = parallel.shard(order[index * optim.batch_size : (index + 1) * optim.batch_size])
        items = [train_set[i] for i in chosen]
        batch = {key: value.to(device) for key, value in collate_items(items, pad_id).items()}
        learning_rate = float(optimizer.param_groups[0]["lr"])
        with autocast:
            loss = answer_loss(model, batch)
        loss.backward()
        if optim.max_grad_norm:
            # Under FSDP the gradients are DTensor shards; clip_grad_norm_ reduces their norm
            # across ranks, so every rank clips by the same global norm.
            torch.nn.utils.clip_grad_norm_(trainable, optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.steps += 1
        result.tokens += parallel.total(sum(len(item.input_ids) for item in items))  # no padding
        result.losses.append(parallel.mean(float(loss.detach())))
        result.train_seconds = time.perf_counter() - started
        if evaluate is not None and _evaluation_due(optim, result.steps, total):
            _evaluate(result.steps, evaluate, result, hooks)
            started = time.perf_counter() - result.train_seconds  # evaluation is not training time
        if hooks.on_step:
            latest = result.evaluations[-1][1] if result.evaluations else None
            hooks.on_step(
                StepReport(
                    result.steps, total, result.losses[-1], result.train_seconds, learning_rate, latest
                )
            )
        if checkpoint_dir is not None and result.steps % optim.checkpoint_every == 0 and result.steps < total:
            _checkpoint(checkpoint_dir, model, optimizer, scheduler, result, fingerprint, parallel, hooks)
        if hooks.should_stop and hooks.should_stop():
            raise Stopped(f"stopped at step {result.steps} of {total}")
    return result


def _evaluation_due(optim: OptimConfig, step: int, total: int) -> bool:
    return step == total or bool(optim.eval_steps and step % optim.eval_steps == 0)


def _evaluate(step: int, evaluate: Callable[[], float], result: LoopResult, hooks: LoopHooks) -> None:
    loss = evaluate()
    result.evaluations.append((step, loss))
    log.info("step %d of %d: validation loss %.4f", step, result.total_steps, loss)
    if hooks.on_eval:
        hooks.on_eval(step, loss)


def _checkpoint(
    directory: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    result: LoopResult,
    fingerprint: str,
    parallel: Parallel,
    hooks: LoopHooks,
) -> None:
    """Every rank takes part (the state is gathered); the main rank writes it."""
    state = _state(model, optimizer, scheduler, result, fingerprint, parallel)
    if state is not None:
        path = save_checkpoint(directory, state)
        if hooks.on_checkpoint:
            hooks.on_checkpoint(result.steps, path)
    parallel.wait()  # no rank runs ahead of a checkpoint it may need to resume from


def _state(
    model: Any, optimizer: Any, scheduler: Any, result: LoopResult, fingerprint: str, parallel: Parallel
) -> dict[str, Any] | None:
    """The whole checkpoint on the main rank, None on the others."""
    trainable, optimizer_state = parallel.training_state(model, optimizer)
    rng = parallel.rng_states()
    if not parallel.is_main:
        return None
    return {
        "fingerprint": fingerprint,
        "layout": parallel.layout,
        "step": result.steps,
        "tokens": result.tokens,
        "train_seconds": result.train_seconds,
        "losses": list(result.losses),
        "evaluations": [[step, loss] for step, loss in result.evaluations],
        "trainable": trainable,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": rng,
    }


def _restore(
    model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any], result: LoopResult, parallel: Parallel
) -> None:
    parallel.load_training_state(model, optimizer, state["trainable"], state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    parallel.restore_rng(state["rng"])
    result.steps = int(state["step"])
    result.tokens = int(state["tokens"])
    result.train_seconds = float(state["train_seconds"])
    result.losses = list(state["losses"])
    result.evaluations = [(int(step), float(loss)) for step, loss in state.get("evaluations", [])]
    result.resumed_from_step = result.steps


def answer_losses(
    model: Any, examples: Sequence[EncodedExample], pad_id: int, batch_size: int = 16
) -> list[tuple[float, int]]:
    """Per example: (summed cross-entropy over its answer tokens, answer tokens). Whole
    examples are what a bootstrap over a held-out set resamples (the research note's RQ1)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows: list[tuple[float, int]] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {
                k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()
            }
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            targets = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
            )
            counted = targets != IGNORE_INDEX
            rows.extend(
                (float(losses[row][counted[row]].sum()), int(counted[row].sum()))
                for row in range(targets.shape[0])
            )
    model.train(was_training)
    return rows


def mean_answer_loss(
    model: Any, examples: Sequence[EncodedExample], pad_id: int, batch_size: int = 16
) -> float:
    """Cross-entropy per answer token over a held-out set (the validation loss)."""
    if not examples:
        return float("nan")
    rows = answer_losses(model, examples, pad_id, batch_size)
    return sum(loss for loss, _ in rows) / max(1, sum(tokens for _, tokens in rows))
