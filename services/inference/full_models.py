"""Full fine-tunes served beside the adapters: each one its own vLLM engine, its own Serve application.

A full fine-tune is a whole model, not a delta on the base, so the base model's engine cannot
serve it. The ingress replica (serve_app.ModelDeployment) keeps a ``FullModelFleet``: for every
servable full model in the registry it deploys a Ray Serve application ``full-<name>-v<version>``
with one ``FullModelDeployment`` replica, which owns a ``VllmEngine`` without LoRA, the model's
own tokenizer and the same ``Scorer`` and ``OpenAIServing`` the base engine uses. Requests are
routed to it by model name over a Serve handle, so every endpoint answers for it as for an adapter.

What each engine may take comes from settings: ``full_model_num_cpus`` / ``full_model_num_gpus``
reserved from Ray, ``full_model_gpu_memory_utilization`` of its GPU, ``full_model_kv_cache_gib`` on
CPU hosts, at most ``max_full_models`` at once. A model that does not fit is not deployed: it waits
(and a load answers 409 naming what it needs), the rest keep serving. A model vLLM refuses
(architecture, dtype, a file) is caught inside its replica, so Serve does not retry a start that
cannot succeed; it is reported as failed with vLLM's reason and its application deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from ray import serve

from services.common.errors import (
    Conflict,
    HsigError,
    InvalidInput,
    NotFound,
    OperationalError,
    Overloaded,
    TemporaryError,
)
from services.common.logging import configure_logging
from services.common.schemas import PredictRequest, PredictResponse
from services.inference import metrics
from services.inference.engine import EngineConfig, LoraRef, VllmEngine, freeze_startup_heap
from services.inference.openai_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from services.inference.openai_serving import OpenAIConfig, OpenAIServing
from services.inference.registry import AdapterRecord
from services.inference.scorer import Scorer, ScorerConfig
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

APP_PREFIX = "full-"
GIB = 2**30
# Errors cross the Serve handle as data: Ray's wrapping of a raised error loses its fields.
ERRORS: dict[str, type[HsigError]] = {
    cls.__name__: cls
    for cls in (InvalidInput, NotFound, Conflict, TemporaryError, Overloaded, OperationalError)
}
Reply = TypeVar("Reply", bound=BaseModel)


def app_name(record: AdapterRecord) -> str:
    return f"{APP_PREFIX}{record.name}-v{record.version}"


# --- inside the full model's own replica -------------------------------------------------------


class SingleModel:
    """The resolver of a full model's engine: one model, its own task, no adapters."""

    def __init__(self, task: str) -> None:
        self._task = task

    def resolve(self, name: str | None) -> LoraRef | None:
        return None

    def task_of(self, name: str | None) -> str:
        return self._task


class FullModelServer:
    """Engine, tokenizer, scorer and OpenAI serving of one full fine-tune."""

    def __init__(self, engine: VllmEngine, scorer: Scorer, openai: OpenAIServing) -> None:
        self.engine = engine
        self.scorer = scorer
        self.openai = openai

    @classmethod
    def start(cls, settings: InferenceSettings, record: AdapterRecord) -> FullModelServer:
        import os

        from transformers import AutoTokenizer

        assert record.manifest is not None  # the registry only hands over full models with manifests
        # vLLM's CPU backend reads its KV-cache size from the environment of this process.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.full_model_kv_cache_gib)
        # vLLM's CPU "auto" binding pins every engine to the same first core; left to the OS
        # scheduler, engines on one host share its cores instead of queueing on one.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        config = EngineConfig(
            model=record.path,
            served_name=record.name,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            kv_cache_gib=settings.full_model_kv_cache_gib,
            gpu_memory_utilization=settings.full_model_gpu_memory_utilization,
            seed=settings.seed,
            load_format=settings.load_format,
            enable_lora=False,
        )
        tokenizer = AutoTokenizer.from_pretrained(record.path)
        engine = VllmEngine.start(config)
        resolver = SingleModel(record.manifest.task)
        base_model = Path(record.manifest.base_model).name
        scorer = Scorer(
            engine,
            tokenizer,
            resolver,
            ScorerConfig(
                base_model,
                settings.max_batch_items,
                settings.max_model_len,
                settings.explain_tokens,
                unadapted_name=record.name,
            ),
        )
        openai = OpenAIServing(
            engine,
            tokenizer,
            resolver,
            OpenAIConfig(
                record.name,
                record.path,
                settings.max_model_len,
                settings.max_prompt_chars,
                settings.max_completion_tokens,
            ),
        )
        return cls(engine, scorer, openai)


@serve.deployment(name="FullModel", max_ongoing_requests=1024, health_check_timeout_s=60)
class FullModelDeployment:
    """One full fine-tune's replica. A start vLLM refuses is kept as ``refusal``, not raised."""

    async def __init__(self, settings: InferenceSettings, record: AdapterRecord) -> None:
        configure_logging(settings.log_level)
        self._server: FullModelServer | None = None
        self._refusal: str | None = None
        try:
            self._server = FullModelServer.start(settings, record)
        except Exception as exc:  # raised, Serve would retry a start that cannot succeed
            self._refusal = f"{type(exc).__name__}: {exc}"
            log.warning("vLLM refused full model %s v%d: %s", record.name, record.version, self._refusal)
        freeze_startup_heap()

    def refusal(self) -> str | None:
        return self._refusal

    async def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(lambda server: server.scorer.predict(PredictRequest.model_validate(body)))

    async def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(
            lambda server: server.openai.completion(CompletionRequest.model_validate(body))
        )

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(
            lambda server: server.openai.chat(ChatCompletionRequest.model_validate(body))
        )

    async def check_health(self) -> None:  # Ray Serve's own replica health check
        if self._server is not None:
            await self._server.engine.check_health()

    async def _answer(self, call: Any) -> dict[str, Any]:
        if self._server is None:
            return _error_reply(OperationalError(f"this full model is not served: {self._refusal}"))
        try:
            reply = await call(self._server)
        except HsigError as exc:
            return _error_reply(exc)
        return {"ok": reply.model_dump(mode="json")}

    def __del__(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.engine.shutdown()


def _error_reply(exc: HsigError) -> dict[str, Any]:
    return {"error": {"class": type(exc).__name__, "message": exc.message, "param": exc.param}}


def _unwrap(reply: dict[str, Any], model: type[Reply]) -> Reply:
    if "error" in reply:
        error = reply["error"]
        raise ERRORS.get(error["class"], OperationalError)(error["message"], param=error["param"])
    return model.model_validate(reply["ok"])


# --- in the ingress replica ----------------------------------------------------------------------


@dataclass
class FullModel:
    """One full fine-tune as the fleet sees it."""

    record: AdapterRecord
    status: str  # waiting (does not fit), starting, served, failed
    reason: str | None = None
    handle: Any = None
    task: asyncio.Task[None] | None = None
    started_at: float = 0.0
    ready_seconds: float | None = None

    @property
    def app(self) -> str:
        return app_name(self.record)

    @property
    def holds_resources(self) -> bool:
        return self.status in ("starting", "served")


class FullModelFleet:
    """Deploys, routes to and removes the full fine-tunes' own engines."""

    def __init__(self, settings: InferenceSettings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._records: dict[str, AdapterRecord] = {}
        self._models: dict[str, FullModel] = {}
        self._unloaded: dict[str, tuple[str, int, str]] = {}  # name -> identity unloaded by DELETE

    # --- names -------------------------------------------------------------------------------

    def served_names(self) -> list[str]:
        return sorted(name for name, model in self._models.items() if model.status == "served")

    def serves(self, name: str | None) -> bool:
        model = self._models.get(name or "")
        return model is not None and model.status == "served"

    def knows(self, name: str) -> bool:
        return name in self._models

    # --- keeping in step with the registry ------------------------------------------------------

    async def refresh(self, records: dict[str, AdapterRecord]) -> list[str]:
        """Deploy what the registry publishes and fits, remove what it no longer has."""
        async with self._lock:
            self._records = records
            changed = []
            for name in [name for name in self._models if name not in records]:
                await self._remove(name)
                changed.append(name)
            for name, record in records.items():
                if record.unservable or self._unloaded.get(name) == record.identity:
                    continue
                current = self._models.get(name)
                same = current is not None and current.record.identity == record.identity
                if same and current.status != "waiting":
                    continue  # served, starting, or refused once: a new version gets a new try
                if await self._begin(record, refuse_if_full=False):
                    changed.append(name)
            await asyncio.to_thread(self._sweep_orphans)
            return changed

    async def load(self, record: AdapterRecord, wait: bool) -> FullModel:
        """Serve ``record`` now; with ``wait``, return once its engine answers (409 if it cannot)."""
        async with self._lock:
            name = record.name
            self._records[name] = record
            if record.unservable:
                raise Conflict(f"full model {name!r} cannot be served: {record.unservable}", param="name")
            self._unloaded.pop(name, None)
            current = self._models.get(name)
            if (
                current is None
                or current.record.identity != record.identity
                or current.status
                in (
                    "failed",
                    "waiting",
                )
            ):
                await self._begin(record, refuse_if_full=True)
            model = self._models[name]
        if wait and model.task is not None:
            await asyncio.shield(model.task)  # a client that hangs up does not stop the start
        if model.status == "failed":
            raise Conflict(f"full model {name!r} could not be loaded: {model.reason}", param="name")
        return model

    async def unload(self, name: str) -> None:
        async with self._lock:
            model = self._models.get(name)
            if model is None:
                known = ", ".join(sorted(self._models)) or "none"
                raise NotFound(f"full model {name!r} is not served; full models: {known}", param="name")
            self._unloaded[name] = model.record.identity
            await self._remove(name)

    async def stop(self) -> None:
        async with self._lock:
            for name in list(self._models):
                await self._remove(name)

    # --- requests --------------------------------------------------------------------------------

    async def predict(self, name: str, request: PredictRequest) -> PredictResponse:
        return await self._call(name, "predict", request, PredictResponse)

    async def completion(self, name: str, request: CompletionRequest) -> CompletionResponse:
        return await self._call(name, "completion", request, CompletionResponse)

    async def chat(self, name: str, request: ChatCompletionRequest) -> ChatCompletionResponse:
        return await self._call(name, "chat", request, ChatCompletionResponse)

    async def _call(self, name: str, method: str, request: BaseModel, reply: type[Reply]) -> Reply:
        model = self._models.get(name)
        if model is None or model.status != "served":
            raise NotFound(f"full model {name!r} is not served", param="model")
        try:
            answer = await getattr(model.handle, method).remote(request.model_dump(mode="json"))
        except Exception as exc:  # the replica died or Serve could not reach it: worth a retry
            raise TemporaryError(f"full model {name!r} did not answer: {exc}", retry_after=5) from exc
        return _unwrap(answer, reply)

    # --- deploying and removing ------------------------------------------------------------------

    async def _begin(self, record: AdapterRecord, refuse_if_full: bool) -> bool:
        """Start deploying ``record`` (replacing an older version); False if it must wait."""
        name = record.name
        if name in self._models:
            await self._remove(name)  # frees its resources before the fit is judged
        shortfall = self._shortfall(record)
        if shortfall is not None:
            self._models[name] = FullModel(record, "waiting", shortfall)
            if refuse_if_full:
                raise Conflict(f"full model {name!r} does not fit: {shortfall}", param="name")
            log.info("full model %s waits: %s", name, shortfall)
            return False
        model = FullModel(record, "starting", started_at=time.monotonic())
        model.task = asyncio.get_running_loop().create_task(self._deploy(model))
        self._models[name] = model
        return True

    def _shortfall(self, record: AdapterRecord) -> str | None:
        """What is missing for one more engine, or None when it fits."""
        import psutil
        import ray

        settings = self._settings
        held = sum(1 for model in self._models.values() if model.holds_resources)
        if held >= settings.max_full_models:
            return (
                f"{held} of at most {settings.max_full_models} full models are served "
                "(HSIG_MAX_FULL_MODELS); unload one (DELETE /v1/adapters/<name>) or raise the limit"
            )
        free = ray.available_resources()
        needs = {"CPU": settings.full_model_num_cpus, "GPU": settings.full_model_num_gpus}
        for resource, amount in needs.items():
            if amount > 0 and free.get(resource, 0.0) + 1e-9 < amount:
                return (
                    f"its engine needs {amount:g} {resource} (HSIG_FULL_MODEL_NUM_{resource}S) and Ray has "
                    f"{free.get(resource, 0.0):g} free"
                )
        if settings.full_model_num_gpus == 0:  # on a CPU host weights and KV cache live in RAM
            weights = sum(path.stat().st_size for path in Path(record.path).glob("*.safetensors"))
            needed = weights + settings.full_model_kv_cache_gib * GIB
            available = psutil.virtual_memory().available
            if needed > available:
                return (
                    f"its engine needs about {needed / GIB:.1f} GiB of memory (weights {weights / GIB:.1f} "
                    f"GiB + KV cache {settings.full_model_kv_cache_gib} GiB) and {available / GIB:.1f} GiB are free"
                )
        return None

    async def _deploy(self, model: FullModel) -> None:
        try:
            handle = await asyncio.wait_for(
                asyncio.to_thread(self._run_app, model.record),
                timeout=self._settings.full_model_start_timeout_seconds,
            )
            refusal = await handle.refusal.remote()
        except Exception as exc:
            refusal = f"the engine did not start: {type(exc).__name__}: {exc}"
        if refusal is not None:
            model.status, model.reason = "failed", refusal
            log.warning(
                "cannot serve full model %s v%d: %s", model.record.name, model.record.version, refusal
            )
            await asyncio.to_thread(_delete_app, model.app)
            return
        model.handle, model.status = handle, "served"
        model.ready_seconds = time.monotonic() - model.started_at
        metrics.FULL_MODELS_SERVED.set(len(self.served_names()))
        log.info(
            "serving full model %s v%d (%s) after %.1f s",
            model.record.name,
            model.record.version,
            model.app,
            model.ready_seconds,
        )

    def _run_app(self, record: AdapterRecord) -> Any:
        """Deploy (or adopt: another ingress replica may have deployed it) and return its handle."""
        name = app_name(record)
        existing = serve.status().applications.get(name)
        if existing is None or str(existing.status) != "ApplicationStatus.RUNNING":
            settings = self._settings
            application = FullModelDeployment.options(
                ray_actor_options={
                    "num_cpus": settings.full_model_num_cpus,
                    "num_gpus": settings.full_model_num_gpus,
                },
                logging_config={
                    "log_level": settings.log_level.upper(),
                    "enable_access_log": settings.access_log,
                },
            ).bind(settings, record)
            serve.run(application, name=name, route_prefix=None)
        return serve.get_app_handle(name)

    async def _remove(self, name: str) -> None:
        model = self._models.pop(name)
        if model.task is not None and not model.task.done():
            model.task.cancel()
        metrics.FULL_MODELS_SERVED.set(len(self.served_names()))
        if model.status != "waiting":
            await asyncio.to_thread(_delete_app, model.app)
            log.info("stopped serving full model %s v%d", name, model.record.version)

    def _sweep_orphans(self) -> None:
        """Delete full-model applications nothing here stands for (an older version, a dead ingress)."""
        expected = {model.app for model in self._models.values() if model.holds_resources}
        for name in serve.status().applications:
            if name.startswith(APP_PREFIX) and name not in expected:
                log.info("deleting orphaned full-model application %s", name)
                _delete_app(name)

    # --- description -----------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Every registered full model, with its status and what its engine takes."""
        rows = []
        for name, record in sorted(self._records.items()):
            model = self._models.get(name)
            if model is not None and model.record.identity == record.identity:
                status, reason, record = model.status, model.reason, model.record
            elif record.unservable:
                status, reason = "unservable", record.unservable
            else:
                status, reason = "unloaded", None
            engine = {
                "application": app_name(record),
                "num_cpus": self._settings.full_model_num_cpus,
                "num_gpus": self._settings.full_model_num_gpus,
                "ready_seconds": model.ready_seconds if model else None,
            }
            rows.append(record.describe(status, reason, engine_id=None, engine=engine))
        return rows


def _delete_app(name: str) -> None:
    try:
        serve.delete(name)
    except Exception as exc:  # already gone, or the controller is shutting down
        log.debug("could not delete application %s: %s", name, exc)
