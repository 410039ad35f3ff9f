"""Scored predictions: p(label) from the engine's label log-probabilities, explanations on request.

The prompt is the shared prompt of the adapter's task, tokenised exactly as the trainer does
(``encode_prompt_answer``: BOS added explicitly, prompt and label tokenised apart), so the
probabilities here are the ones the trainer's own evaluation computes with peft. The task is
btc-trend for the base model and btc-trend adapters (Increase / Decrease, single tokens: one
engine call per item); an implicit-hate adapter reads the item's ``headline`` as the post and
scores Yes / No / Unsure (multi-token: one call per label).

A request is prepared whole before any engine call (issue 17): every adapter resolved once per
name, every prompt built and tokenised in one call to the fast tokenizer's backend
(``PromptEncoder``: the same ids as one ``encode`` per prompt; BOS is still added by hand), every
length checked. So a bad item costs nothing and a 64-item batch pays one tokenizer call, not 64.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from services.common.errors import InvalidInput
from services.common.prompts import (
    BTC_TREND,
    bos_id_of,
    btc_trend_prompt,
    label_token_ids,
    labels_for,
    prompt_for,
)
from services.common.schemas import BASE_MODEL_NAME, Prediction, PredictItem, PredictRequest, PredictResponse
from services.common.scoring import best_label, normalise, p_increase
from services.inference.engine import LoraRef, VllmEngine

log = logging.getLogger(__name__)

SCORED_TASKS = ("btc-trend", "implicit-hate")


class Resolver(Protocol):
    """Names to what the engine runs: the adapter pool of the base engine, or one full model."""

    def resolve(self, name: str | None) -> LoraRef | None: ...
    def task_of(self, name: str | None) -> str: ...


@dataclass(frozen=True)
class ScorerConfig:
    base_model_name: str
    max_batch_items: int
    max_model_len: int
    explain_tokens: int
    unadapted_name: str = BASE_MODEL_NAME  # what a prediction without an adapter is called


class BatchTooLarge(InvalidInput):
    """More items than ``max_batch_items``: 422, like every other shape the body may not have."""

    status_code = 422


def check_batch_size(request: PredictRequest, limit: int) -> None:
    if len(request.items) > limit:
        raise BatchTooLarge(
            f"{len(request.items)} items; at most {limit} per request (max_batch_items)", param="items"
        )


class PromptEncoder:
    """Prompts to ids without special tokens, as ``tokenizer.encode(prompt,
    add_special_tokens=False)`` gives them (the trainer's call), in one call per batch.

    A transformers fast tokenizer is called through its Rust backend directly: ``__call__``
    does the same ``encode_batch`` and then builds a ``BatchEncoding`` item by item (offsets,
    masks), which took about half of a single prompt's tokenising time
    (``bench/bench_prompt_encoder.py``). The backend is this encoder's own copy, without
    truncation or padding, so nothing another caller sets on the shared one changes these ids.
    transformers does more around the backend for some settings (``split_special_tokens``
    gives different ids from the backend's ``encode_special_tokens``), so the copy is used only
    if it gives ``encode``'s ids on probe texts (the special tokens written out, spaces,
    unicode); any other tokenizer is called as before.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._encode_batch = _backend_encoder(tokenizer)

    @property
    def uses_backend(self) -> bool:
        return self._encode_batch is not None

    def __call__(self, prompts: Sequence[str]) -> list[list[int]]:
        if self._encode_batch is None:
            return list(self._tokenizer(list(prompts), add_special_tokens=False)["input_ids"])
        return [encoding.ids for encoding in self._encode_batch(list(prompts), add_special_tokens=False)]


def _backend_encoder(tokenizer: Any) -> Any | None:
    """The ``encode_batch`` of a copy of the tokenizer's backend, or None where the copy cannot
    be made or would give other ids than ``encode``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    try:
        own = Tokenizer.from_str(backend.to_str())
    except Exception:  # a backend with parts that cannot be serialised
        log.info("tokenizer backend could not be copied; prompts go through the tokenizer's own call")
        return None
    own.no_truncation()
    own.no_padding()
    encode_batch = getattr(own, "encode_batch_fast", own.encode_batch)
    probes = _probe_texts(tokenizer)
    expected = [tokenizer.encode(text, add_special_tokens=False) for text in probes]
    if [encoding.ids for encoding in encode_batch(probes, add_special_tokens=False)] != expected:
        log.info(
            "tokenizer backend gives other ids than encode(); prompts go through the tokenizer's own call"
        )
        return None
    return encode_batch


def _probe_texts(tokenizer: Any) -> list[str]:
    specials = " ".join(getattr(tokenizer, "all_special_tokens", None) or [])
    return [
        "",
        " leading and trailing  ",
        "tabs\tand\nnewlines",
        f"special tokens as text: {specials}",
        "Ünïcödé “quotes” 🚀 ₿ 比特币",
        btc_trend_prompt("Bitcoin ETF inflows pile up", datetime(2021, 5, 3, 9, 0, tzinfo=UTC)),
    ]


class Scorer:
    def __init__(self, engine: VllmEngine, tokenizer: Any, pool: Resolver, config: ScorerConfig) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._pool = pool
        self._config = config
        self._encode = PromptEncoder(tokenizer)
        self._bos = bos_id_of(tokenizer)
        self._label_ids = {task: label_token_ids(tokenizer, labels_for(task)) for task in SCORED_TASKS}

    async def predict(self, request: PredictRequest) -> PredictResponse:
        started = time.perf_counter()
        check_batch_size(request, self._config.max_batch_items)
        # Every adapter is resolved before any work starts: a bad name costs nothing.
        resolved: dict[str | None, tuple[LoraRef | None, str]] = {}
        targets = []
        for item in request.items:
            name = item.adapter or request.adapter
            if name not in resolved:
                resolved[name] = self._resolve(name)
            targets.append(resolved[name])
        tasks = [task for _, task in targets]
        all_ids = self.prompt_ids_batch(request.items, tasks)
        for ids, task in zip(all_ids, tasks, strict=True):
            self._check_length(ids, self._label_ids[task], request.explain)
        predictions = await asyncio.gather(
            *(
                self._predict_one(ids, lora, task, request.explain, started)
                for ids, (lora, task) in zip(all_ids, targets, strict=True)
            )
        )
        return PredictResponse(predictions=list(predictions))

    def _resolve(self, name: str | None) -> tuple[LoraRef | None, str]:
        """The engine's adapter and the task whose prompt and labels it answers."""
        lora = self._pool.resolve(name)
        task = self._pool.task_of(name)
        if task not in SCORED_TASKS:
            raise InvalidInput(
                f"adapter {name!r} was trained for {task!r}, which has no labels to score", param="adapter"
            )
        return lora, task

    def prompt_ids(self, item: PredictItem, task: str = BTC_TREND) -> list[int]:
        return self.prompt_ids_batch([item], [task])[0]

    def prompt_ids_batch(self, items: Sequence[PredictItem], tasks: Sequence[str]) -> list[list[int]]:
        """Every item's prompt ids, tokenised in one call (the fast tokenizer batches in Rust)."""
        prompts = [self._prompt(item, task) for item, task in zip(items, tasks, strict=True)]
        encoded = self._encode(prompts)
        bos = [self._bos] if self._bos is not None else []
        return [bos + ids for ids in encoded]

    @staticmethod
    def _prompt(item: PredictItem, task: str) -> str:
        try:
            return prompt_for(
                task,
                headline=item.headline,
                published_at=item.published_at,
                market_situation=item.market_situation,
                precision=item.time_precision,
                post=item.headline,  # implicit-hate reads the text as the post
            )
        except (ValueError, OverflowError) as exc:  # e.g. a time that leaves the calendar in UTC
            raise InvalidInput(f"cannot build the prompt: {exc}", param="items") from exc

    async def _predict_one(
        self, ids: list[int], lora: LoraRef | None, task: str, explain: bool, started: float
    ) -> Prediction:
        label_ids = self._label_ids[task]
        logprobs = await self._engine.label_logprobs(ids, label_ids, lora)
        probabilities = normalise(logprobs)
        label = best_label(probabilities)
        explanation = None
        if explain:
            explanation = await self._explain([*ids, *label_ids[label]], lora)
        return Prediction(
            label=label,
            p_increase=p_increase(probabilities),
            probabilities=probabilities,
            adapter=lora.name if lora else self._config.unadapted_name,
            base_model=self._config.base_model_name,
            latency_ms=(time.perf_counter() - started) * 1000,
            explanation=explanation,
        )

    async def _explain(self, answered_ids: Sequence[int], lora: LoraRef | None) -> str:
        # The explanation continues the scored answer (greedy), so it argues for the label given.
        generation = await self._engine.generate(
            answered_ids, lora, max_tokens=self._config.explain_tokens, temperature=0.0
        )
        return generation.text.strip()

    def _check_length(self, ids: Sequence[int], label_ids: dict[str, list[int]], explain: bool) -> None:
        longest_label = max(len(label) for label in label_ids.values())
        needed = len(ids) + longest_label + (self._config.explain_tokens if explain else 1)
        if needed > self._config.max_model_len:
            raise InvalidInput(
                f"prompt is {len(ids)} tokens; with the answer it needs {needed}, "
                f"the model takes {self._config.max_model_len}",
                param="items",
            )
