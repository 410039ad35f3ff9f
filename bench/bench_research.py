"""LoRA against full fine-tuning per research-note task on this CPU: seconds per step and peak
memory (peak RSS, each run in a fresh process), on the tiny model and the ~106M Llama shape of
bench_trainer.py, through the trainer's own code (build_dataset, load_for_training, run_loop).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_research.py [--steps 8] [--batch-size 4] [--max-length 256]

Tasks: chat (guanaco-llama2-1k, RQ1) and implicit-hate (the Davidson corpus, RQ2); btc-trend
(RQ3) at the ~106M shape is bench_trainer.py. Random weights: time and memory, not quality.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

CORPORA = {
    "chat": REPO_ROOT / "data/guanaco_llama2_1k/guanaco_llama2_1k.parquet",
    "implicit-hate": REPO_ROOT / "data/hate_speech_davidson/labeled_data.csv",
}


def worker(task: str, method: str, model_dir: Path, tokenizer_dir: Path, args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from services.trainer.config import TrainConfig
    from services.trainer.datasets import build_dataset
    from services.trainer.loop import LoopHooks, encode_examples, run_loop
    from services.trainer.memory import read_peak, reset_peak, return_freed_memory_to_os
    from services.trainer.modeling import BaseModelRef, count_parameters, load_for_training

    config = TrainConfig.model_validate(
        {
            "name": f"bench-{task}-{method}",
            "task": task,
            "method": method,
            "base_model": str(model_dir),
            "data": {"path": str(CORPORA[task]), "max_examples": 256, "max_length": args.max_length},
            "optim": {"max_steps": args.steps, "batch_size": args.batch_size, "learning_rate": 1e-4},
        }
    )
    split = build_dataset(config, "sqlite://", "BTC/USD", "1h")  # corpora: no database read
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    train_set, _ = encode_examples(tokenizer, split.train, args.max_length, with_eos=task == "chat")
    return_freed_memory_to_os()  # what train() does on a CPU host
    model = load_for_training(config, BaseModelRef(str(model_dir), "bench"), "cpu", "fp32")
    trainable, total = count_parameters(model)
    from bench_trainer import _current_rss

    loaded_rss, _ = _current_rss()
    reset_peak("cpu")  # the training's peak, not the load's
    stamps: list[float] = []
    run_loop(
        model, train_set, config.optim, tokenizer.pad_token_id, None, "bench",
        LoopHooks(on_step=lambda r: stamps.append(time.perf_counter())),
    )  # fmt: skip
    per_step = [b - a for a, b in itertools.pairwise(stamps)][1:]  # the first step warms up
    peak, kind = read_peak("cpu")
    tokens = statistics.mean(len(e.input_ids) for e in train_set[: args.batch_size * args.steps])
    return {
        "task": task,
        "method": method,
        "trainable": trainable,
        "total": total,
        "peak_bytes": peak,
        "peak_kind": kind,
        "rss_after_load_bytes": loaded_rss,
        "seconds_per_step": statistics.median(per_step),
        "mean_tokens_per_example": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "106m"], choices=["tiny", "106m"])
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)  # task method model tokenizer
    args = parser.parse_args()
    if args.worker:
        task, method, model_dir, tokenizer_dir = args.worker
        print(json.dumps(worker(task, method, Path(model_dir), Path(tokenizer_dir), args)))
        return
    from bench_trainer import SHAPE, build_model

    from services.common.tiny_model import build_tiny_model

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    results = []
    with tempfile.TemporaryDirectory(prefix="hsig-bench-research-") as tmp:
        tiny = build_tiny_model(Path(tempfile.gettempdir()) / "hsig-bench-tiny")
        models = {"tiny": tiny}
        if "106m" in args.shapes:
            models["106m"] = Path(tmp) / "llama-106m"
            build_model(models["106m"])  # ids of the tiny tokenizer (< 512) fit its vocabulary
        for shape in args.shapes:
            for task, method in itertools.product(CORPORA, ("full", "lora")):
                command = [sys.executable, __file__, "--worker", task, method, str(models[shape]), str(tiny)]
                command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
                command += ["--max-length", str(args.max_length)]
                output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
                results.append({"shape": shape, **json.loads(output.strip().splitlines()[-1])})
                print(f"{shape} {task} {method}: done", flush=True)
    report(results, args, SHAPE)


def report(results: list[dict], args: argparse.Namespace, shape: dict) -> None:
    mib = 2**20
    print(
        f"\nOMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}; {args.steps} steps, batch "
        f"{args.batch_size}, max_length {args.max_length}; 106m = {shape}"
    )
    print(
        f"{'shape':<5} {'task':<14} {'method':<6} {'trainable':>12} {'peak RSS':>9} {'added':>8} {'s/step':>7} {'tokens/ex':>9}"
    )
    for row in results:
        print(
            f"{row['shape']:<5} {row['task']:<14} {row['method']:<6} {row['trainable']:>12,} "
            f"{row['peak_bytes'] / mib:>7,.0f} M {(row['peak_bytes'] - row['rss_after_load_bytes']) / mib:>6,.0f} M "
            f"{row['seconds_per_step']:>7.3f} {row['mean_tokens_per_example']:>9.0f}"
        )
    by = {(r["shape"], r["task"], r["method"]): r for r in results}
    for shape_name, task in sorted({(r["shape"], r["task"]) for r in results}):
        lora, full = by[(shape_name, task, "lora")], by[(shape_name, task, "full")]
        print(
            f"LoRA / full, {shape_name} {task}: peak memory {lora['peak_bytes'] / full['peak_bytes']:.2f}x "
            f"(added by training {_added(lora) / max(1, _added(full)):.2f}x), "
            f"time per step {lora['seconds_per_step'] / full['seconds_per_step']:.2f}x"
        )


def _added(row: dict) -> int:
    return row["peak_bytes"] - row["rss_after_load_bytes"]


if __name__ == "__main__":
    main()
