"""Scored predictions: p(label) from the engine's label log-probabilities, explanations on request.

The prompt is the shared btc-trend prompt, tokenised exactly as the trainer does
(``encode_prompt_answer``: BOS added explicitly, prompt and label tokenised apart), so the
probabilities here are the ones the trainer's own evaluation computes with peft.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInput
from services.common.prompts import TREND_LABELS, bos_id_of, btc_trend_prompt, label_token_ids
from services.common.schemas import BASE_MODEL_NAME, Prediction, PredictItem, PredictRequest, PredictResponse
from services.common.scoring import best_label, normalise, p_increase
from services.inference.engine import LoraRef, VllmEngine
from services.inference.pool import AdapterPool

TASK = "btc-trend"


@dataclass(frozen=True)
class PredictorConfig:
    base_model_name: str
    max_batch_items: int
    max_model_len: int
    explain_tokens: int


class Predictor:
    def __init__(
        self, engine: VllmEngine, tokenizer: Any, pool: AdapterPool, config: PredictorConfig
    ) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._pool = pool
        self._config = config
        self._bos = bos_id_of(tokenizer)
        self._label_ids = label_token_ids(tokenizer, TREND_LABELS)

    async def predict(self, request: PredictRequest) -> PredictResponse:
        if len(request.items) > self._config.max_batch_items:
            raise InvalidInput(
                f"{len(request.items)} items; at most {self._config.max_batch_items} per request",
                param="items",
            )
        # Every adapter is resolved before any work starts: a bad name costs nothing.
        adapters = [item.adapter or request.adapter for item in request.items]
        loras = [self._resolve(name) for name in adapters]
        predictions = await asyncio.gather(
            *(
                self._predict_one(item, lora, request.explain)
                for item, lora in zip(request.items, loras, strict=True)
            )
        )
        return PredictResponse(predictions=list(predictions))

    def _resolve(self, name: str | None) -> LoraRef | None:
        lora = self._pool.resolve(name)
        record = self._pool.record_of(lora.name) if lora else None
        if record is not None and record.manifest is not None and record.manifest.task != TASK:
            raise InvalidInput(
                f"adapter {lora.name!r} was trained for {record.manifest.task!r}, not {TASK!r}",
                param="adapter",
            )
        return lora

    def prompt_ids(self, item: PredictItem) -> list[int]:
        prompt = btc_trend_prompt(item.headline, item.published_at, item.market_situation)
        ids = self._tokenizer.encode(prompt, add_special_tokens=False)
        return ([self._bos] if self._bos is not None else []) + ids

    async def _predict_one(self, item: PredictItem, lora: LoraRef | None, explain: bool) -> Prediction:
        started = time.perf_counter()
        ids = self.prompt_ids(item)
        self._check_length(ids, explain)
        logprobs = await self._engine.label_logprobs(ids, self._label_ids, lora)
        probabilities = normalise(logprobs)
        label = best_label(probabilities)
        explanation = None
        if explain:
            explanation = await self._explain(ids, label, lora)
        return Prediction(
            label=label,
            p_increase=p_increase(probabilities),
            probabilities=probabilities,
            adapter=lora.name if lora else BASE_MODEL_NAME,
            base_model=self._config.base_model_name,
            latency_ms=(time.perf_counter() - started) * 1000,
            explanation=explanation,
        )

    async def _explain(self, ids: Sequence[int], label: str, lora: LoraRef | None) -> str:
        # The explanation continues the scored answer (greedy), so it argues for the label given.
        generation = await self._engine.generate(
            [*ids, *self._label_ids[label]], lora, max_tokens=self._config.explain_tokens, temperature=0.0
        )
        return generation.text.strip()

    def _check_length(self, ids: Sequence[int], explain: bool) -> None:
        longest_label = max(len(label) for label in self._label_ids.values())
        needed = len(ids) + longest_label + (self._config.explain_tokens if explain else 1)
        if needed > self._config.max_model_len:
            raise InvalidInput(
                f"prompt is {len(ids)} tokens; with the answer it needs {needed}, "
                f"the model takes {self._config.max_model_len}",
                param="items",
            )
