"""The Ray Serve application: an HTTP ingress (FastAPI) and a model deployment that owns vLLM.

Written against ``ray[serve]==2.60.0``. Two deployments:
- ``ModelDeployment`` owns a ``ModelService`` (vLLM ``AsyncLLM`` with LoRA, the adapter pool,
  the registry poll); one replica per accelerator (``replica_num_cpus`` / ``replica_num_gpus``).
- ``ApiIngress`` answers HTTP with the FastAPI app of ``api.py`` and calls the model
  deployment through a handle; it holds the in-flight limit and the ``hsig_inference_*`` metrics.

``start(settings) -> base_url`` and ``stop()`` run it locally (tests, demo, ``hsig inference
serve``); ``app(args)`` is the builder a Ray cluster's Serve config imports
(``import_path: services.inference.serve_app:app``, deploy/kuberay/rayservice.yaml).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from services.common.errors import HsigError, OperationalError, TemporaryError
from services.common.logging import configure_logging
from services.common.schemas import PredictRequest, PredictResponse
from services.common.settings import get_settings
from services.inference.api import build_api
from services.inference.openai_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

RAY_VERSION_TESTED = "2.60.0"
APP_NAME = "inference"
REPO_ROOT = Path(__file__).resolve().parents[2]
# What the ingress may ask the model replica to do (the ModelService coroutines).
MODEL_METHODS = frozenset(
    {
        "predict",
        "completion",
        "chat",
        "models",
        "adapters",
        "load_adapter",
        "unload_adapter",
        "check_health",
        "metric_families",
    }
)
# Passed on to every Ray worker: threads, offline hubs, vLLM's CPU cache size, the import path.
WORKER_ENV_KEYS = (
    "OMP_NUM_THREADS",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_OMP_THREADS_BIND",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "VLLM_NO_USAGE_STATS",
    "DO_NOT_TRACK",
)


class _Refusal:
    """An HsigError crossing the Ray boundary; the client raises it again."""

    def __init__(self, error: HsigError) -> None:
        self.error = error


@serve.deployment(name="ModelDeployment", max_ongoing_requests=1024, health_check_timeout_s=60)
class ModelDeployment:
    async def __init__(self, settings: InferenceSettings) -> None:
        from services.inference.service import ModelService

        configure_logging(settings.log_level)
        self._service = await ModelService.start(settings)

    async def call(self, method: str, *args: Any) -> Any:
        if method not in MODEL_METHODS:
            raise OperationalError(f"unknown model method {method!r}")
        try:
            return await getattr(self._service, method)(*args)
        except HsigError as exc:
            # Our errors are answers (a 404, a 400), not replica failures: sent back as a value so
            # Ray Serve neither logs a traceback for each nor wraps them.
            return _Refusal(exc)

    async def check_health(self) -> None:  # Ray Serve's own replica health check
        await self._service.check_health()

    def __del__(self) -> None:
        service = getattr(self, "_service", None)
        if service is not None:
            service.engine.shutdown()


class RayModelClient:
    """The ``ModelClient`` of api.py over a Serve handle; replica errors come back as ours."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def _call(self, method: str, *args: Any) -> Any:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            result = await self._handle.call.remote(method, *args)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise TemporaryError(f"the model replica is busy or restarting: {exc}", retry_after=1) from exc
        except Exception as exc:
            cause = getattr(exc, "cause", exc)  # RayTaskError wraps what the replica raised
            if isinstance(cause, HsigError):
                raise cause from None
            raise OperationalError(f"the model replica failed: {type(cause).__name__}: {cause}") from exc
        if isinstance(result, _Refusal):
            raise result.error
        return result

    async def predict(self, request: PredictRequest) -> PredictResponse:
        return await self._call("predict", request)

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        return await self._call("completion", request)

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        return await self._call("chat", request)

    async def models(self) -> ModelList:
        return await self._call("models")

    async def adapters(self) -> list[dict[str, Any]]:
        return await self._call("adapters")

    async def load_adapter(self, name: str) -> dict[str, Any]:
        return await self._call("load_adapter", name)

    async def unload_adapter(self, name: str) -> None:
        await self._call("unload_adapter", name)

    async def check_health(self) -> None:
        await self._call("check_health")

    async def metric_families(self) -> list[Any]:
        return await self._call("metric_families")


@serve.deployment(name="ApiIngress", max_ongoing_requests=4096)
@serve.ingress()
class ApiIngress:
    def __init__(self, settings: InferenceSettings, model: DeploymentHandle) -> None:
        configure_logging(settings.log_level)
        self._settings = settings
        self._client = RayModelClient(model)

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self._settings, self._client)


def build(settings: InferenceSettings) -> Any:
    """The bound application: the ingress over one model deployment."""
    model = ModelDeployment.options(
        ray_actor_options={"num_cpus": settings.replica_num_cpus, "num_gpus": settings.replica_num_gpus}
    ).bind(settings)
    # The ingress must accept more than the in-flight limit, or Ray would queue what we should refuse.
    return ApiIngress.options(
        max_ongoing_requests=settings.max_in_flight * 4 + 64, ray_actor_options={"num_cpus": 0}
    ).bind(settings, model)


def app(args: dict[str, str] | None = None) -> Any:
    """Application builder for a Serve config (``import_path: services.inference.serve_app:app``)."""
    overrides = {key: value for key, value in (args or {}).items()}
    settings = get_settings(InferenceSettings)
    if overrides:
        settings = InferenceSettings(**{**settings.model_dump(), **overrides})
    return build(settings.absolute())


def _worker_env() -> dict[str, str]:
    env = {key: os.environ[key] for key in WORKER_ENV_KEYS if key in os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
    return env


def start(settings: InferenceSettings | None = None) -> str:
    """Start Ray (or join ``ray_address``), deploy, wait until ready; returns the API's base URL."""
    import ray

    settings = (settings or get_settings(InferenceSettings)).absolute()
    # Ray's single-node switch: its processes bind to 127.0.0.1, not the machine's address.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        init_args: dict[str, Any] = {"runtime_env": {"env_vars": _worker_env()}, "include_dashboard": False}
        if settings.ray_address:
            init_args["address"] = settings.ray_address
        else:
            init_args.update(num_cpus=settings.ray_num_cpus, object_store_memory=75 * 2**20)
            if settings.ray_metrics_port:
                init_args["_metrics_export_port"] = settings.ray_metrics_port
        ray.init(**init_args)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    log.info("deploying the inference application (base model %s)", settings.resolved_base_model())
    serve.run(build(settings), name=APP_NAME, route_prefix="/")
    return f"http://{settings.host}:{settings.port}"


def stop() -> None:
    """Tear the application down and leave Ray (started by ``start``)."""
    import ray

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
