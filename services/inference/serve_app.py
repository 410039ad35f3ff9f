"""The Ray Serve application: one deployment whose replicas each answer HTTP and own a vLLM engine.

Written against ``ray[serve]==2.60.0``. ``ModelDeployment`` is a FastAPI ingress
(``serve.ingress``, the app of ``api.py``) over a ``ModelService`` (vLLM ``AsyncLLM`` with LoRA,
the adapter pool, the registry poll), one replica per accelerator (``replica_num_cpus`` /
``replica_num_gpus``). API and engine share a process on purpose: a separate ingress deployment
cost one Ray call per request, measured here at 81 against 222 requests/s for a call that does
no model work (bench notes in docs/inference.md). Serve's proxy balances HTTP over replicas;
each replica polls the registry, so every replica serves the same adapters within one poll.

``start(settings) -> base_url`` and ``stop()`` run it locally (tests, demo, ``hsig inference
serve``); ``app(args)`` is the builder a Ray cluster's Serve config imports
(``import_path: services.inference.serve_app:app``, deploy/kuberay/rayservice.yaml).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from ray import serve

from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.inference.app import build_app
from services.inference.engine import freeze_startup_heap
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

RAY_VERSION_TESTED = "2.60.0"
APP_NAME = "inference"
REPO_ROOT = Path(__file__).resolve().parents[2]
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
DIRECT_INGRESS_KEYS = (
    "RAY_SERVE_ENABLE_DIRECT_INGRESS",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
)
WORKER_ENV_KEYS += DIRECT_INGRESS_KEYS
CONTROL_LOOP_SECONDS = "0.5"  # RAY_SERVE_CONTROL_LOOP_INTERVAL_S (Ray's default 0.1), see start()
DIRECT_INGRESS_PORTS = 100  # replica HTTP ports from `port` up; the proxy defaults above them


@serve.deployment(name="ModelDeployment", max_ongoing_requests=1024, health_check_timeout_s=60)
@serve.ingress()
class ModelDeployment:
    """One replica: the FastAPI app and the engine in one process (no hop between them)."""

    async def __init__(self, settings: InferenceSettings) -> None:
        from services.inference.service import ModelService

        configure_logging(settings.log_level)
        # Before the engine starts: its threads (vLLM's output handler) run under it too.
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
        self._settings = settings
        self._service = await ModelService.start(settings)
        freeze_startup_heap()

    def __serve_build_asgi_app__(self) -> Any:  # Serve calls this after __init__
        return build_app(self._settings, self._service)

    async def check_health(self) -> None:  # Ray Serve's own replica health check
        await self._service.check_health()

    def __del__(self) -> None:
        service = getattr(self, "_service", None)
        if service is not None:
            service.engine.shutdown()


def build(settings: InferenceSettings) -> Any:
    """The bound application: one deployment, each replica an API over its own engine."""
    return ModelDeployment.options(
        # Serve must accept more than the in-flight limit, or it would queue what the API should refuse.
        max_ongoing_requests=settings.max_in_flight * 4 + 64,
        ray_actor_options={"num_cpus": settings.replica_num_cpus, "num_gpus": settings.replica_num_gpus},
        logging_config=_serve_logging(settings),
    ).bind(settings)


def _serve_logging(settings: InferenceSettings) -> dict[str, Any]:
    return {"log_level": settings.log_level.upper(), "enable_access_log": settings.access_log}


def app(args: dict[str, str] | None = None) -> Any:
    """Application builder for a Serve config (``import_path: services.inference.serve_app:app``).

    Settings come from the ``HSIG_*`` environment (the config's ``runtime_env``); the config's
    ``args:`` override them by field name (``max_loras: "8"``).
    """
    settings = get_settings(InferenceSettings)
    if args:
        settings = InferenceSettings(**{**settings.model_dump(), **args})
    return build(settings.absolute())


def _worker_env() -> dict[str, str]:
    env = {key: os.environ[key] for key in WORKER_ENV_KEYS if key in os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
    return env


def ingress_env(settings: InferenceSettings) -> dict[str, str]:
    """Ray Serve's environment switches for ``direct_ingress`` (read at import by its
    controller and replicas, so set before Ray starts): the replicas take HTTP ports from
    ``port`` up (the first replica gets ``port`` itself), the proxy goes to ``proxy_port``, a
    stopping replica drains ``drain_seconds``."""
    if not settings.direct_ingress:
        return {}
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(settings.port + DIRECT_INGRESS_PORTS),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(settings.drain_seconds),
    }


def proxy_port(settings: InferenceSettings) -> int:
    if not settings.direct_ingress:
        return settings.port
    return settings.proxy_port or settings.port + DIRECT_INGRESS_PORTS


def start(settings: InferenceSettings | None = None) -> str:
    """Start Ray (or join ``ray_address``), deploy, wait until ready; returns the API's base URL."""
    import ray

    settings = (settings or get_settings(InferenceSettings)).absolute()
    # Set, or cleared: a parent's switches must not leak into a stack started without them.
    switches = ingress_env(settings)
    for key in DIRECT_INGRESS_KEYS:
        if key in switches:
            os.environ[key] = switches[key]
        else:
            os.environ.pop(key, None)
    # Ray's single-node switch: its processes bind to 127.0.0.1, not the machine's address.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Serve's controller runs its control loop every 0.1 s by default: on an idle 2-core host
    # that was 20% of a core (and 10% more in the GCS it talks to) taken from the engine. Every
    # 0.5 s it reconciles replicas and health a few tenths of a second later, nothing a model
    # server notices. Read by the controller process, so it must be set before Ray starts; a
    # value in the environment wins.
    os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", CONTROL_LOOP_SECONDS)
    if not ray.is_initialized():
        init_args: dict[str, Any] = {"runtime_env": {"env_vars": _worker_env()}, "include_dashboard": False}
        if settings.ray_address:
            init_args["address"] = settings.ray_address
        else:
            init_args.update(num_cpus=settings.ray_num_cpus, object_store_memory=75 * 2**20)
            if settings.ray_metrics_port:
                init_args["_metrics_export_port"] = settings.ray_metrics_port
        ray.init(**init_args)
    serve.start(
        http_options={"host": settings.host, "port": proxy_port(settings)},
        logging_config=_serve_logging(settings),
    )
    log.info("deploying the inference application (base model %s)", settings.resolved_base_model())
    serve.run(build(settings), name=APP_NAME, route_prefix="/")
    base_url = f"http://{settings.host}:{settings.port}"
    if settings.direct_ingress:
        _await_replica_http(base_url)
    return base_url


def _await_replica_http(base_url: str, seconds: float = 60.0) -> None:
    """With direct ingress the replica starts its own HTTP server as it comes up: wait until it
    answers, so the URL handed back is usable (the proxy's readiness says nothing of it)."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replica did not answer on {base_url} (direct ingress) in {seconds:g} s")
        time.sleep(0.5)


def stop() -> None:
    """Delete the application and the full fine-tunes' (their replicas stop their engines), leave Ray.

    A local Ray started by ``start`` goes with ``ray.shutdown()``; a joined cluster
    (``ray_address``) keeps running, only this application is removed from it.
    """
    import ray

    if ray.is_initialized():
        from services.inference.full_models import APP_PREFIX

        serve.delete(APP_NAME)
        for name in serve.status().applications:  # the full fine-tunes' engines (full_models.py)
            if name.startswith(APP_PREFIX):
                serve.delete(name)
        ray.shutdown()
