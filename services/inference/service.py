"""The model side of the service: engine, tokenizer, adapter pool, full models, scorer, OpenAI.

Knows nothing of HTTP: each Ray Serve replica (serve_app.py) owns one and the API (api.py)
calls it as its ``ModelClient``. The base model and its LoRA adapters run on this replica's
engine; each full fine-tune runs on an engine of its own (full_models.py), and requests naming
one are routed there, so every endpoint answers for every model by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from services.common.cutoffs import KnowledgeCutoff, cutoff_for
from services.common.errors import NotFound
from services.common.logging import forget, log_once
from services.common.schemas import BASE_MODEL_NAME, PredictRequest, PredictResponse
from services.inference.engine import EngineConfig, VllmEngine
from services.inference.full_models import FullModelFleet
from services.inference.openai_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    ServiceLimits,
)
from services.inference.openai_serving import OpenAIConfig, OpenAIServing
from services.inference.pool import AdapterPool
from services.inference.registry import AdapterRecord, discover, padding_hint
from services.inference.scorer import Scorer, ScorerConfig, check_batch_size
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


class ModelService:
    def __init__(self, settings: InferenceSettings, engine: VllmEngine, tokenizer: Any) -> None:
        self.settings = settings
        self.engine = engine
        base_name = settings.public_base_name()
        self.pool = AdapterPool(engine, base_name)
        self.fleet = FullModelFleet(settings)
        self._records: dict[str, AdapterRecord] = {}
        self._started = int(time.time())
        self.scorer = Scorer(
            engine,
            tokenizer,
            self.pool,
            ScorerConfig(
                base_name, settings.max_batch_items, settings.max_model_len, settings.explain_tokens
            ),
        )
        self.openai = OpenAIServing(
            engine,
            tokenizer,
            self.pool,
            OpenAIConfig(
                base_name,
                settings.resolved_base_model(),
                settings.max_model_len,
                settings.max_prompt_chars,
                settings.max_completion_tokens,
            ),
        )
        self._poll_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: InferenceSettings) -> ModelService:
        """Start the engine, serve every adapter the registry has, and start polling it."""
        from transformers import AutoTokenizer

        model = settings.resolved_base_model()
        config = EngineConfig(
            model=model,
            served_name=settings.public_base_name(),
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            max_loras=settings.max_loras,
            max_lora_rank=settings.max_lora_rank,
            max_cpu_loras=settings.max_cpu_loras,
            kv_cache_gib=settings.kv_cache_gib,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=settings.seed,
            load_format=settings.load_format,
            scratch_dir=str(settings.data_dir / "inference"),
        )
        tokenizer = AutoTokenizer.from_pretrained(model)
        service = cls(settings, VllmEngine.start(config), tokenizer)
        await service.engine.pin_base()
        try:
            await service.refresh()
        except Exception as exc:  # no database yet: serve the base model, /readyz says why, poll
            log.warning("registry unreadable at start-up (%s); adapters follow once it answers", exc)
        hint = padding_hint(service._records.values(), settings.max_lora_rank)
        if hint:
            log.warning(hint)
        if settings.registry_poll_seconds > 0:
            service._poll_task = asyncio.get_running_loop().create_task(service._poll_forever())
        return service

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        await self.fleet.stop()
        self.engine.shutdown()

    async def refresh(self) -> list[str]:
        """Read the registry once; adapters go to the pool, full fine-tunes to their own engines."""
        self._records = await self._discover()
        adapters = {name: record for name, record in self._records.items() if not record.is_full}
        full = {name: record for name, record in self._records.items() if record.is_full}
        return [*await self.pool.refresh(adapters), *await self.fleet.refresh(full)]

    async def _discover(self) -> dict[str, AdapterRecord]:
        settings = self.settings
        return await asyncio.to_thread(
            discover,
            settings.resolved_database_url,
            settings.adapters_path,
            settings.public_base_name(),
            settings.max_lora_rank,
        )

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_seconds)
            try:
                changed = await self.refresh()
                forget(log, "registry-poll")
                if changed:
                    log.info("registry poll changed adapters: %s", ", ".join(changed))
            except Exception as exc:  # a database hiccup must not stop the poll
                log_once(log, logging.WARNING, "registry-poll", "registry poll failed (will retry): %s", exc)

    # --- what the HTTP side asks for ---------------------------------------------------------

    async def predict(self, request: PredictRequest) -> PredictResponse:
        check_batch_size(request, self.settings.max_batch_items)
        names = [item.adapter or request.adapter for item in request.items]
        self._check_served(names)
        if not any(self.fleet.serves(name) for name in names):
            return await self.scorer.predict(request)
        return await self._predict_split(request, names)

    async def _predict_split(self, request: PredictRequest, names: list[str | None]) -> PredictResponse:
        """Items for full models go to their engines, the rest to this one; answers keep the order."""
        groups: dict[str | None, list[int]] = {}
        for index, name in enumerate(names):
            groups.setdefault(name if self.fleet.serves(name) else None, []).append(index)
        calls = []
        for name, indexes in groups.items():
            items = [request.items[i] for i in indexes]
            if name is None:
                calls.append(self.scorer.predict(request.model_copy(update={"items": items})))
            else:
                sub = PredictRequest(
                    items=[item.model_copy(update={"adapter": None}) for item in items],
                    adapter=name,
                    explain=request.explain,
                )
                calls.append(self.fleet.predict(name, sub))
        answers = await asyncio.gather(*calls)
        predictions: list[Any] = [None] * len(names)
        for indexes, answer in zip(groups.values(), answers, strict=True):
            for index, prediction in zip(indexes, answer.predictions, strict=True):
                predictions[index] = prediction
        return PredictResponse(predictions=predictions)

    def _check_served(self, names: list[str | None]) -> None:
        """Every name resolved before any work starts: a bad one costs nothing, and says what is served."""
        for name in dict.fromkeys(names):
            if name is None or name in self.pool.base_names() or self.fleet.serves(name):
                continue
            if name not in self.pool.served_names():
                served = ", ".join([BASE_MODEL_NAME, *self.pool.served_names(), *self.fleet.served_names()])
                raise NotFound(f"model {name!r} is not served; served: {served}", param="adapter")

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        self._check_served([request.model])
        if self.fleet.serves(request.model):
            return await self.fleet.completion(request.model, request)
        return await self.openai.completion(request)

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        self._check_served([request.model])
        if self.fleet.serves(request.model):
            return await self.fleet.chat(request.model, request)
        return await self.openai.chat(request)

    def _cutoff(self, base_model: str, recorded: Any = None) -> KnowledgeCutoff:
        """A manifest's recorded cutoff, else the base model's from the table or the setting."""
        if recorded:
            return KnowledgeCutoff.model_validate(recorded)
        return cutoff_for(base_model, self.settings.model_cutoffs)

    async def models(self) -> ModelList:
        """The base, its served adapters, and every full fine-tune with its engine's status."""
        base = self.settings.public_base_name()
        base_cutoff = self._cutoff(self.settings.resolved_base_model())
        cards = [
            ModelCard(
                id=base,
                created=self._started,
                root=self.settings.resolved_base_model(),
                kind="base",
                knowledge_cutoff=base_cutoff,
            )
        ]
        for name in self.pool.served_names():
            record = self.pool.record_of(name)
            manifest = record.manifest if record else None
            cutoff = (
                self._cutoff(manifest.base_model, manifest.base_model_cutoff) if manifest else base_cutoff
            )
            cards.append(
                ModelCard(
                    id=name,
                    created=self._started,
                    root=record.path if record else name,
                    parent=base,
                    knowledge_cutoff=cutoff,
                )
            )
        for row in self.fleet.describe():
            if row["status"] == "unloaded":
                continue
            cards.append(
                ModelCard(
                    id=row["name"],
                    created=self._started,
                    root=row["path"],
                    parent=Path(row.get("base_model", "")).name or None,
                    kind="full",
                    status=row["status"],
                    reason=row["reason"],
                    knowledge_cutoff=self._cutoff(row.get("base_model", ""), row.get("base_model_cutoff")),
                )
            )
        limits = ServiceLimits(
            max_batch_items=self.settings.max_batch_items, max_in_flight=self.settings.max_in_flight
        )
        return ModelList(data=cards, limits=limits)

    async def adapters(self) -> list[dict[str, Any]]:
        return sorted([*self.pool.describe(), *self.fleet.describe()], key=lambda row: row["name"])

    async def load_adapter(self, name: str, wait: bool = True) -> dict[str, Any]:
        """Serve ``name`` now (the trainer asks right after publishing); a full model gets its engine."""
        self._records = await self._discover()
        record = self._records.get(name)
        if record is None:
            known = ", ".join(self._records) or "none"
            raise NotFound(f"{name!r} is not in the registry; registered: {known}", param="name")
        if record.is_full:
            await self.fleet.load(record, wait)
        else:
            await self.pool.load(record)
        return next(row for row in await self.adapters() if row["name"] == name)

    async def unload_adapter(self, name: str) -> None:
        if self.fleet.knows(name):
            await self.fleet.unload(name)
        else:
            await self.pool.unload(name)

    async def check_health(self) -> None:
        await self.engine.check_health()
