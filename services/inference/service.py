"""The model side of the service: engine, tokenizer, adapter pool, predictor and OpenAI serving.

Knows nothing of HTTP or Ray: each Ray Serve replica (serve_app.py) owns one and the API
(api.py) calls it as its ``ModelClient``; a test or script can own one directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from services.common.logging import forget, log_once
from services.common.schemas import PredictRequest, PredictResponse
from services.inference.engine import EngineConfig, VllmEngine
from services.inference.openai_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)
from services.inference.openai_serving import OpenAIConfig, OpenAIServing
from services.inference.pool import AdapterPool, PoolConfig
from services.inference.predictor import Predictor, PredictorConfig
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


class ModelService:
    def __init__(self, settings: InferenceSettings, engine: VllmEngine, tokenizer: Any) -> None:
        self.settings = settings
        self.engine = engine
        base_name = settings.public_base_name()
        self.pool = AdapterPool(
            engine,
            PoolConfig(
                settings.resolved_database_url, settings.adapters_path, base_name, settings.max_lora_rank
            ),
        )
        self.predictor = Predictor(
            engine,
            tokenizer,
            self.pool,
            PredictorConfig(
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
        await service.pool.refresh()
        if settings.registry_poll_seconds > 0:
            service._poll_task = asyncio.get_running_loop().create_task(service._poll_forever())
        return service

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        self.engine.shutdown()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_seconds)
            try:
                changed = await self.pool.refresh()
                forget(log, "registry-poll")
                if changed:
                    log.info("registry poll changed adapters: %s", ", ".join(changed))
            except Exception as exc:  # a database hiccup must not stop the poll
                log_once(log, logging.WARNING, "registry-poll", "registry poll failed (will retry): %s", exc)

    # --- what the HTTP side asks for ---------------------------------------------------------

    async def predict(self, request: PredictRequest) -> PredictResponse:
        return await self.predictor.predict(request)

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        return await self.openai.completion(request)

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        return await self.openai.chat(request)

    async def models(self) -> ModelList:
        return self.openai.models()

    async def adapters(self) -> list[dict[str, Any]]:
        return self.pool.describe()

    async def load_adapter(self, name: str) -> dict[str, Any]:
        record = await self.pool.load(name)
        return next(row for row in self.pool.describe() if row["name"] == record.name)

    async def unload_adapter(self, name: str) -> None:
        await self.pool.unload(name)

    async def check_health(self) -> None:
        await self.engine.check_health()
