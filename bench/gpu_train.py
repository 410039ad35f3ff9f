"""LoRA against full fine-tuning at the real Llama-2-7B and 13B shapes (random weights, bf16)
on one CUDA GPU, through the trainer's own code: peft wrapping (modeling._wrap_lora) and the
training loop (loop.run_loop). Each (shape, method) runs in a fresh process so its peak
memory (torch.cuda.max_memory_allocated) is its own.

    .venv/bin/python bench/gpu_train.py                      # 7b and 13b, lora and full
    .venv/bin/python bench/gpu_train.py --shapes 7b --steps 20 --seq-len 512 --batch-size 4
    .venv/bin/python bench/gpu_train.py --shapes tiny --device cpu   # smoke test without a GPU

The research note saw 5 vs 16 min (7B) and 7 vs 59 min (13B) per epoch, with LoRA at about
25% of the memory. Full fine-tuning here is pure bf16 AdamW (no fp32 master weights), as in
LLaMA-Factory's "full bf16" row; 13B full needs about 105 GB plus activations (an 80 GB card
runs out; use --gradient-checkpointing and an H100/H200-class card, or FSDP across GPUs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SHAPES = {
    "7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
    },
    "13b": {
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
    },
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2},
}


def worker(shape: str, method: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.common.prompts import EncodedExample
    from services.trainer.config import TrainConfig
    from services.trainer.loop import LoopHooks, run_loop
    from services.trainer.memory import read_peak, reset_peak
    from services.trainer.modeling import _wrap_lora, count_parameters

    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = TrainConfig.model_validate(
        {
            "name": f"gpu-{shape}-{method}",
            "method": method,
            "base_model": f"random-llama-{shape}",
            "data": {"source": "file", "path": "unused.jsonl"},
            "lora": {"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.05, "target_modules": args.targets},
            "optim": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": 1e-4,
                "gradient_checkpointing": args.gradient_checkpointing,
            },
        }
    )
    reset_peak(device)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):  # random weights built where they train: no 26 GB file to write
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **SHAPES[shape]))
    torch.set_default_dtype(previous)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "full":
        model.requires_grad_(True)
    else:
        model = _wrap_lora(config, model)
    trainable, total = count_parameters(model)
    generator = torch.Generator().manual_seed(0)
    examples = [
        EncodedExample(
            torch.randint(3, 32000, (args.seq_len,), generator=generator).tolist(), args.seq_len // 2
        )
        for _ in range(args.batch_size * args.steps)
    ]
    stamps: list[float] = []

    def on_step(_: object) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    run_loop(model, examples, config.optim, 0, None, "gpu-bench", LoopHooks(on_step=on_step))
    per_step = [b - a for a, b in itertools.pairwise(stamps)][2:]  # two warm-up steps
    peak, kind = read_peak(device)
    return {
        "shape": shape,
        "method": method,
        "trainable": trainable,
        "total": total,
        "peak_bytes": peak,
        "peak_kind": kind,
        "seconds_per_step": sorted(per_step)[len(per_step) // 2],
        "tokens_per_step": args.batch_size * args.seq_len,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["7b", "13b"], choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--epoch-examples", type=int, default=1000, help="Examples per epoch for the min/epoch column."
    )
    parser.add_argument("--worker", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args)))
        return
    rows = []
    for shape in args.shapes:
        for method in args.methods:
            print(f"== {shape} {method}", flush=True)
            command = [sys.executable, __file__, "--worker", shape, method, *sys.argv[1:]]
            done = subprocess.run(
                command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
            )
            if done.returncode != 0:
                print(
                    f"   failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
                )
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    gib = 2**30
    steps_per_epoch = args.epoch_examples / args.batch_size
    print(
        f"\nbatch {args.batch_size} x {args.seq_len} tokens, {args.steps} steps, rank {args.rank} on {args.targets}"
    )
    print(f"{'shape':<6}{'method':<6}{'trainable':>15}{'peak GiB':>10}{'s/step':>9}{'min/epoch*':>12}")
    for row in rows:
        minutes = row["seconds_per_step"] * steps_per_epoch / 60
        print(
            f"{row['shape']:<6}{row['method']:<6}{row['trainable']:>15,}{row['peak_bytes'] / gib:>10.1f}"
            f"{row['seconds_per_step']:>9.3f}{minutes:>12.1f}"
        )
    print(f"* an epoch of {args.epoch_examples} examples (guanaco-llama2-1k has 1,000)")
    by_key = {(r["shape"], r["method"]): r for r in rows}
    for shape in args.shapes:
        lora, full = by_key.get((shape, "lora")), by_key.get((shape, "full"))
        if lora and full:
            print(
                f"{shape}: LoRA / full memory {lora['peak_bytes'] / full['peak_bytes']:.2f}x, "
                f"time {lora['seconds_per_step'] / full['seconds_per_step']:.2f}x"
            )


if __name__ == "__main__":
    main()
