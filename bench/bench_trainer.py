"""LoRA against full fine-tuning on the same ~100M-parameter Llama (random weights), same data
and steps, on this CPU: peak memory (peak RSS, each method in a fresh process) and seconds per
step, through the trainer's own code (modeling.load_for_training, loop.run_loop).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_trainer.py [--steps 12] [--batch-size 4]
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_trainer.py --gradient-checkpointing both \
        [--shape 106m|tiny] [--seq-len 512] [--repeats 1]

Goal (issue 3): LoRA at most 0.5x the memory and 0.7x the time of full fine-tuning.

``--gradient-checkpointing both`` (issue 13) runs each method with optim.gradient_checkpointing
off and on (each in a fresh process) and reports what checkpointing saves in peak memory and
costs in time per step. ``--seq-len N`` trains on random token sequences of N tokens (the loss on
their second half) instead of the ~90-token planted prompts: activations grow with length, so
that is where checkpointing shows. ``--shape tiny`` runs the suite's tiny Llama shape.
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

# About 106M parameters: Llama-2's vocabulary and layout, narrower and shallower.
SHAPE = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 512,
}
# The suite's tiny Llama (services.common.tiny_model): a smoke run, not a measurement.
TINY_SHAPE = {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
SHAPES = {"106m": SHAPE, "tiny": TINY_SHAPE}
GOAL_MEMORY, GOAL_TIME = 0.5, 0.7


def build_model(directory: Path, shape: dict | None = None) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**(shape or SHAPE), tie_word_embeddings=False))
    model.save_pretrained(directory, safe_serialization=True)


def worker(
    method: str,
    model_dir: Path,
    steps: int,
    batch_size: int,
    glibc_default: bool,
    checkpointing: bool = False,
    seq_len: int | None = None,
) -> dict:
    """One method in this (fresh) process: returns its figures as JSON-able data."""
    from transformers import AutoTokenizer

    from services.common.schemas import LabelledRowOut
    from services.common.tiny_model import build_tiny_model
    from services.trainer.config import TrainConfig
    from services.trainer.datasets import trend_split
    from services.trainer.loop import LoopHooks, encode_examples, run_loop
    from services.trainer.memory import read_peak, reset_peak, return_freed_memory_to_os
    from services.trainer.modeling import BaseModelRef, count_parameters, load_for_training
    from tests.trainer.planted import planted_rows

    # Real prompts (planted btc-trend rows) tokenised by the tiny tokenizer: ids < 512 fit any vocab.
    tokenizer = AutoTokenizer.from_pretrained(
        build_tiny_model(Path(tempfile.gettempdir()) / "hsig-bench-tiny")
    )
    rows = [LabelledRowOut.model_validate(r) for r in planted_rows(200)]
    config = TrainConfig.model_validate(
        {
            "name": f"bench-{method}",
            "method": method,
            "base_model": str(model_dir),
            "data": {"source": "file", "path": "unused.jsonl"},
            "optim": {
                "max_steps": steps,
                "batch_size": batch_size,
                "learning_rate": 1e-4,
                "gradient_checkpointing": checkpointing,
            },
        }
    )
    if seq_len:
        train_set = _random_examples(seq_len, steps * batch_size)
    else:
        split = trend_split(rows, config.data)
        train_set, _ = encode_examples(tokenizer, split.train, 512, with_eos=False)
    if not glibc_default:  # what train() does on a CPU host (services/trainer/memory.py)
        return_freed_memory_to_os()
    model = load_for_training(config, BaseModelRef(str(model_dir), "bench"), "cpu", "fp32")
    trainable, total = count_parameters(model)
    loaded_rss, _ = _current_rss()
    load_peak, _ = read_peak("cpu")  # loading safetensors maps the file and copies it: a spike
    reset_peak("cpu")  # from here on, the peak is the training's (Linux: /proc/self/clear_refs)
    stamps: list[float] = []
    run_loop(
        model,
        train_set,
        config.optim,
        tokenizer.pad_token_id,
        None,
        "bench",
        LoopHooks(on_step=lambda r: stamps.append(time.perf_counter())),
    )
    per_step = [b - a for a, b in itertools.pairwise(stamps)][1:]  # drop the first (warm-up) step
    train_peak, kind = read_peak("cpu")
    tokens = sum(len(train_set[i].input_ids) for i in range(min(len(train_set), batch_size)))
    return {
        "method": method,
        "gradient_checkpointing": checkpointing,
        "trainable": trainable,
        "total": total,
        "peak_bytes": max(load_peak, train_peak),
        "train_peak_bytes": train_peak,
        "load_peak_bytes": load_peak,
        "peak_kind": kind,
        "rss_after_load_bytes": loaded_rss,
        "seconds_per_step_median": statistics.median(per_step),
        "seconds_per_step_all": per_step,
        "tokens_per_step_approx": tokens,
    }


def _random_examples(seq_len: int, count: int) -> list:
    """Token ids below 512 (any vocabulary here holds them), the loss on the second half."""
    import torch

    from services.common.prompts import EncodedExample

    generator = torch.Generator().manual_seed(0)
    return [
        EncodedExample(torch.randint(4, 512, (seq_len,), generator=generator).tolist(), seq_len // 2)
        for _ in range(count)
    ]


def _current_rss() -> tuple[int, str]:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024, "rss"
    return 0, "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--repeats", type=int, default=2, help="Runs per method, alternated; medians reported."
    )
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="Keep glibc's default heap (freed memory stays in the process) instead of the trainer's setting.",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        choices=["off", "on", "both"],
        default="off",
        help="optim.gradient_checkpointing for every run; both: each method off and on.",
    )
    parser.add_argument("--shape", choices=list(SHAPES), default="106m")
    parser.add_argument(
        "--seq-len", type=int, help="Random sequences of this many tokens instead of the planted prompts."
    )
    parser.add_argument("--worker", choices=["lora", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        figures = worker(
            args.worker,
            args.model_dir,
            args.steps,
            args.batch_size,
            args.glibc_default,
            args.worker_checkpointing,
            args.seq_len,
        )
        print(json.dumps(figures))
        return
    if args.gradient_checkpointing != "off" or args.shape != "106m" or args.seq_len:
        compare_checkpointing(args)
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[dict]] = {"full": [], "lora": []}
    with tempfile.TemporaryDirectory(prefix="hsig-bench-") as tmp:
        model_dir = Path(tmp) / "llama-100m"
        started = time.perf_counter()
        build_model(model_dir)
        print(f"built a random Llama ({SHAPE}) in {time.perf_counter() - started:.1f} s", flush=True)
        for repeat in range(args.repeats):  # alternated, so a busy spell hurts both methods alike
            for method in ("full", "lora"):
                print(
                    f"run {repeat + 1}/{args.repeats}: {method}, {args.steps} steps, batch {args.batch_size}, fresh process",
                    flush=True,
                )
                command = [sys.executable, __file__, "--worker", method, "--model-dir", str(model_dir)]
                command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
                command += ["--glibc-default"] if args.glibc_default else []
                output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
                runs[method].append(json.loads(output.strip().splitlines()[-1]))
    report({method: _median_run(found) for method, found in runs.items()}, args)


def _run_worker(method: str, checkpointing: bool, model_dir: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--worker", method, "--model-dir", str(model_dir)]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    command += ["--glibc-default"] if args.glibc_default else []
    command += ["--worker-checkpointing"] if checkpointing else []
    command += ["--seq-len", str(args.seq_len)] if args.seq_len else []
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def compare_checkpointing(args: argparse.Namespace) -> None:
    """Each method with gradient checkpointing off and/or on, alternated, fresh processes."""
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    runs: dict[tuple[str, bool], list[dict]] = {(m, gc): [] for m in ("full", "lora") for gc in settings}
    with tempfile.TemporaryDirectory(prefix="hsig-bench-") as tmp:
        model_dir = Path(tmp) / f"llama-{args.shape}"
        build_model(model_dir, SHAPES[args.shape])
        data = f"random {args.seq_len}-token sequences" if args.seq_len else "planted prompts (~90 tokens)"
        print(f"shape {args.shape} ({SHAPES[args.shape]}); {data}", flush=True)
        for repeat in range(args.repeats):
            for method, checkpointing in runs:
                print(
                    f"run {repeat + 1}/{args.repeats}: {method}, checkpointing "
                    f"{'on' if checkpointing else 'off'}, {args.steps} steps, batch {args.batch_size}",
                    flush=True,
                )
                runs[(method, checkpointing)].append(_run_worker(method, checkpointing, model_dir, args))
    results = {key: _median_run(found) for key, found in runs.items()}
    mib = 2**20
    print(
        f"\nOMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}; shape {args.shape}; {data}; "
        f"{args.steps} steps, batch {args.batch_size}, {args.repeats} run(s) each (medians)"
    )
    print(f"{'method':<6} {'gc':<4} {'peak RSS':>9} {'in training':>12} {'added':>7} {'s/step':>7}   (MiB)")
    for (method, checkpointing), row in results.items():
        added = row["train_peak_bytes"] - row["rss_after_load_bytes"]
        print(
            f"{method:<6} {'on' if checkpointing else 'off':<4} {row['peak_bytes'] / mib:>9,.0f} "
            f"{row['train_peak_bytes'] / mib:>12,.0f} {added / mib:>7,.0f} {row['seconds_per_step_median']:>7.3f}"
        )
    for method in ("full", "lora"):
        off, on = results.get((method, False)), results.get((method, True))
        if off and on:
            added_off = off["train_peak_bytes"] - off["rss_after_load_bytes"]
            added_on = on["train_peak_bytes"] - on["rss_after_load_bytes"]
            print(
                f"{method}: checkpointing on / off: training peak {on['train_peak_bytes'] / off['train_peak_bytes']:.2f}x "
                f"(added by training {added_on / mib:,.0f} vs {added_off / mib:,.0f} MiB), "
                f"s/step {on['seconds_per_step_median'] / off['seconds_per_step_median']:.2f}x"
            )


def _median_run(found: list[dict]) -> dict:
    merged = dict(found[0])
    for key in (
        "peak_bytes",
        "train_peak_bytes",
        "load_peak_bytes",
        "rss_after_load_bytes",
        "seconds_per_step_median",
    ):
        merged[key] = statistics.median(run[key] for run in found)
    merged["seconds_per_step_all"] = [round(s, 3) for run in found for s in run["seconds_per_step_all"]]
    return merged


def report(results: dict, args: argparse.Namespace) -> None:
    full, lora = results["full"], results["lora"]
    memory_ratio = lora["peak_bytes"] / full["peak_bytes"]
    train_ratio = lora["train_peak_bytes"] / full["train_peak_bytes"]
    time_ratio = lora["seconds_per_step_median"] / full["seconds_per_step_median"]
    # What training adds on top of a process that already holds the model (interpreter,
    # libraries' code pages and the weights are the same for both methods).
    added = {m: r["peak_bytes"] - r["rss_after_load_bytes"] for m, r in results.items()}
    mib = 2**20
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    heap = (
        "glibc's default heap"
        if args.glibc_default
        else "freed memory returned to the OS (the trainer's setting)"
    )
    print(
        f"\nOMP_NUM_THREADS={threads}; {args.steps} steps, batch {args.batch_size}, {args.repeats} runs per method"
    )
    print(f"heap: {heap}")
    print(
        f"{'method':<6} {'trainable':>12} {'total':>12} {'peak RSS':>9} {'in training':>12} "
        f"{'in loading':>11} {'after load':>11} {'s/step':>7}   (MiB; medians over runs)"
    )
    for row in (full, lora):
        print(
            f"{row['method']:<6} {row['trainable']:>12,} {row['total']:>12,} {row['peak_bytes'] / mib:>9,.0f} "
            f"{row['train_peak_bytes'] / mib:>12,.0f} {row['load_peak_bytes'] / mib:>11,.0f} "
            f"{row['rss_after_load_bytes'] / mib:>11,.0f} {row['seconds_per_step_median']:>7.3f}"
        )
    print(
        f"\nLoRA / full: peak memory {memory_ratio:.2f}x (goal <= {GOAL_MEMORY}x: "
        f"{'met' if memory_ratio <= GOAL_MEMORY else 'NOT met'}; training phase alone {train_ratio:.2f}x), "
        f"seconds per step {time_ratio:.2f}x (goal <= {GOAL_TIME}x: {'met' if time_ratio <= GOAL_TIME else 'NOT met'}); "
        f"trainable parameters {lora['trainable'] / full['trainable']:.5f}x"
    )
    print(
        f"memory added by training on top of the loaded model: full {added['full'] / mib:,.0f} MiB, "
        f"LoRA {added['lora'] / mib:,.0f} MiB ({added['lora'] / added['full']:.2f}x)"
    )


if __name__ == "__main__":
    main()
