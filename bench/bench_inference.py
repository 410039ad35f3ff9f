"""Inference benchmark: throughput and p50/p99 latency of POST /v1/predict on the real stack.

Scenarios: the base model, one adapter, four adapters mixed (round-robin per request), each at
concurrency 1, 8 and 64; then label scoring against generating a 32-token explanation. Goals
(issue 4): four mixed >= 0.8x one adapter; concurrency 64 >= 10x concurrency 1; scoring >= 10x
explaining. Requests go only to 127.0.0.1 and are bounded in count and time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_inference.py [--quick]

After the HTTP suite it measures the engine alone (``VllmEngine`` in this process, no Ray, no
HTTP) with the same prompts, to show how much of each figure is the engine and how much the
serving path.

The GPU variant (bench/gpu_inference.py) reuses ``run_suite`` with a Llama-2-7B-shaped model.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

HEADLINES_CSV = REPO_ROOT / "data" / "cnbc_headlines" / "cnbc_headlines.csv"
FIRST_TIME = datetime(2018, 1, 1, tzinfo=UTC)


def _load_headlines() -> list[str]:
    with HEADLINES_CSV.open(newline="", encoding="utf-8") as handle:
        return [title for row in csv.DictReader(handle) if (title := (row.get("Headlines") or "").strip())]


HEADLINES = _load_headlines()
# Every request in the run gets its own prompt (a real headline, a new minute), as in production:
# only the shared instruction prefix is served from vLLM's prefix cache, never a whole prompt.
_prompt_numbers = itertools.count()


def next_prompt() -> tuple[str, datetime]:
    number = next(_prompt_numbers)
    return HEADLINES[number % len(HEADLINES)], FIRST_TIME + timedelta(minutes=number)


CONCURRENCY = (1, 8, 64)
GOALS = {"mixed4_vs_one": 0.8, "c64_vs_c1": 10.0, "scoring_vs_explaining": 10.0}
MAX_SECONDS_PER_CASE = 60.0


@dataclass(frozen=True)
class Result:
    scenario: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def _body(index: int, adapters: list[str], explain: bool) -> dict:
    headline, published_at = next_prompt()
    return {
        "items": [{"headline": headline, "published_at": published_at.isoformat()}],
        "adapter": adapters[index % len(adapters)],
        "explain": explain,
    }


async def run_case(
    base_url: str, scenario: str, adapters: list[str], concurrency: int, requests: int, explain: bool = False
) -> Result:
    """``requests`` single-item predictions, ``concurrency`` at a time; stops early at the time cap."""
    latencies: list[float] = []
    counter = itertools.count()
    deadline = time.perf_counter() + MAX_SECONDS_PER_CASE

    async def worker(client: httpx.AsyncClient) -> None:
        while (index := next(counter)) < requests and time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.post("/v1/predict", json=_body(index, adapters, explain))
            if response.status_code != 200:
                raise RuntimeError(f"{scenario}: HTTP {response.status_code}: {response.text[:200]}")
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        await client.post("/v1/predict", json=_body(0, adapters, explain))  # warm this path
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Result(
        scenario, concurrency, len(latencies), seconds, statistics.median(ordered) * 1000, p99 * 1000
    )


def requests_for(concurrency: int, quick: bool) -> int:
    per_worker = 8 if quick else 24
    return max(32 if quick else 64, concurrency * per_worker)


async def run_suite(base_url: str, adapters: list[str], quick: bool = False) -> dict[str, object]:
    results: list[Result] = []
    scenarios = {"base": ["base"], "one adapter": adapters[:1], "four mixed": adapters[:4]}
    for scenario, names in scenarios.items():
        for concurrency in CONCURRENCY:
            result = await run_case(base_url, scenario, names, concurrency, requests_for(concurrency, quick))
            results.append(result)
            _print_row(result)
    explain_requests = 16 if quick else 48
    scoring = await run_case(base_url, "scoring", adapters[:1], 8, explain_requests * 4)
    explaining = await run_case(
        base_url, "explaining 32 tokens", adapters[:1], 8, explain_requests, explain=True
    )
    for result in (scoring, explaining):
        _print_row(result)
    by_key = {(r.scenario, r.concurrency): r.throughput for r in results}
    ratios = {
        "mixed4_vs_one": by_key[("four mixed", 64)] / by_key[("one adapter", 64)],
        "c64_vs_c1": by_key[("one adapter", 64)] / by_key[("one adapter", 1)],
        "scoring_vs_explaining": scoring.throughput / explaining.throughput,
        "lora_vs_base": by_key[("one adapter", 64)] / by_key[("base", 64)],
    }
    print()
    for name, value in ratios.items():
        goal = GOALS.get(name)
        verdict = "" if goal is None else (f"  goal >= {goal:g}x: " + ("met" if value >= goal else "NOT met"))
        print(f"{name:24s} {value:6.2f}x{verdict}")
    return {"results": results, "ratios": ratios}


def _print_row(result: Result) -> None:
    print(
        f"{result.scenario:22s} c={result.concurrency:<3d} n={result.requests:<5d} "
        f"{result.throughput:8.1f} req/s  p50 {result.p50_ms:8.1f} ms  p99 {result.p99_ms:8.1f} ms",
        flush=True,
    )


async def engine_only(model_dir: Path, adapter_dirs: list[Path], scratch: Path, quick: bool) -> None:
    """The same scoring and explaining straight on the engine: no HTTP, no Ray."""
    from transformers import AutoTokenizer

    from services.common.prompts import TREND_LABELS, bos_id_of, btc_trend_prompt, label_token_ids
    from services.inference.engine import EngineConfig, LoraRef, VllmEngine

    engine = VllmEngine.start(
        EngineConfig(model=str(model_dir), max_loras=4, max_lora_rank=8, scratch_dir=str(scratch))
    )
    await engine.pin_base()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loras = [LoraRef(path.parent.name, index + 1, str(path)) for index, path in enumerate(adapter_dirs)]
    for lora in loras:
        await engine.add_adapter(lora)
    labels = label_token_ids(tokenizer, TREND_LABELS)
    bos = bos_id_of(tokenizer)

    def prompt_ids() -> list[int]:
        return [bos, *tokenizer.encode(btc_trend_prompt(*next_prompt()), add_special_tokens=False)]

    async def measure(name: str, concurrency: int, count: int, explain: bool, mixed: bool) -> float:
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            lora = loras[index % len(loras)] if mixed else loras[0]
            ids = prompt_ids()
            async with gate:
                if explain:
                    await engine.generate([*ids, *labels["Increase"]], lora, max_tokens=32)
                else:
                    await engine.label_logprobs(ids, labels, lora)

        await one(0)
        started = time.perf_counter()
        await asyncio.gather(*(one(index) for index in range(count)))
        throughput = count / (time.perf_counter() - started)
        print(
            f"engine only: {name:26s} c={concurrency:<3d} n={count:<5d} {throughput:8.1f} req/s", flush=True
        )
        return throughput

    try:
        scale = 1 if quick else 3
        c1 = await measure("one adapter", 1, 32 * scale, False, False)
        await measure("one adapter", 8, 128 * scale, False, False)
        c64 = await measure("one adapter", 64, 512 * scale, False, False)
        mixed = await measure("four mixed", 64, 512 * scale, False, True)
        explaining = await measure("explaining 32 tokens", 8, 16 * scale, True, False)
        scoring = await measure("scoring", 8, 128 * scale, False, False)
        print(
            f"engine only: c64_vs_c1 {c64 / c1:.2f}x, mixed4_vs_one {mixed / c64:.2f}x, "
            f"scoring_vs_explaining {scoring / explaining:.2f}x"
        )
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per case (a smoke run)")
    args = parser.parse_args()

    from services.common.db.migrate import upgrade
    from services.common.tiny_model import build_tiny_model
    from services.inference import serve_app
    from services.inference.settings import InferenceSettings
    from tests.support.adapters import publish_lora
    from tests.support.net import free_port

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "models" / "tiny-llama")
        database_url = f"sqlite:///{root / 'registry.db'}"
        upgrade(database_url)
        adapters = [f"bench{i}" for i in range(4)]
        for seed, name in enumerate(adapters, start=1):
            publish_lora(model_dir, root / "adapters", name, seed=seed, database_url=database_url)
        settings = InferenceSettings(
            data_dir=root,
            database_url=database_url,
            base_model=str(model_dir),
            port=free_port(),
            max_in_flight=256,
            max_num_seqs=64,
            max_lora_rank=8,  # as the engine-alone case and the rank-8 adapters: vLLM pads to it
            registry_poll_seconds=0,
        )
        print("starting Ray Serve + vLLM (tiny model, 4 adapters)...", flush=True)
        started = time.perf_counter()
        base_url = serve_app.start(settings)
        print(f"ready in {time.perf_counter() - started:.1f} s", flush=True)
        try:
            asyncio.run(run_suite(base_url, adapters, quick=args.quick))
        finally:
            serve_app.stop()
        adapter_dirs = [root / "adapters" / name / "v1" for name in adapters]
        asyncio.run(engine_only(model_dir, adapter_dirs, root / "scratch", args.quick))


if __name__ == "__main__":
    main()
