"""LoRA, QLoRA and full fine-tuning at the real Llama-2-7B and 13B shapes (random weights, bf16)
on one CUDA GPU, through the trainer's own code: peft wrapping (modeling._wrap_lora, which for
qlora runs peft's prepare_model_for_kbit_training) and the training loop (loop.run_loop). Each
(shape, method) runs in a fresh process so its peak memory (torch.cuda.max_memory_allocated)
is its own.

    .venv/bin/python bench/gpu_train.py                      # 7b and 13b, lora qlora full
    .venv/bin/python bench/gpu_train.py --shapes 7b --steps 20 --seq-len 512 --batch-size 4
    .venv/bin/python bench/gpu_train.py --shapes 13b --gradient-checkpointing --json rows.json
    .venv/bin/python bench/gpu_train.py --shapes 7b 13b --gradient-checkpointing-both --json gc.json
    .venv/bin/python bench/gpu_train.py --shapes tiny --device cpu   # smoke test without a GPU

QLoRA without a checkpoint file: the bf16 model is built on the GPU as for the other methods,
then every nn.Linear inside the decoder layers (not lm_head, as transformers' bitsandbytes
quantizer leaves it) becomes a bitsandbytes Linear4bit with the trainer's BitsAndBytesConfig
settings (NF4, double quantization, bf16 compute) holding those weights, quantized on the
device one module at a time, each bf16 weight freed as it goes; the model is then flagged
is_loaded_in_4bit as from_pretrained would flag it, so peft wraps the 4-bit layers. Its peak
memory is counted from after quantization (the 4-bit weights are resident, the bf16 build is
not): the training peak of a 4-bit model, as loading a 4-bit checkpoint would give. The peak
including the bf16 build is reported too (build_peak_bytes). On a CPU, qlora runs only where
bitsandbytes is importable (its CPU backend, fp32 compute: a code-path smoke test; the trainer
itself refuses qlora without CUDA); otherwise it prints a skip line.

Order: lora and full for every shape first, then qlora, so the LoRA/full comparison comes in
even if a time limit cuts the run short. With --json PATH the parent rewrites PATH after each
(shape, method), so a run cut short still leaves every row it finished.

Gradient checkpointing is off by default at both shapes, for lora, qlora and full alike, so
time ratios compare like with like. 13B full needs no more memory without it: bf16 weights,
gradients and AdamW's two states are 4 x 26 GB, and the peak is in the optimizer step (foreach
AdamW adds one weights-sized temporary, about 26 GB more: ~121 GiB), after backward has freed
the activations (~21 GiB at batch 4 x 512, less than that temporary). That fits a 139 GiB H200,
not an 80 GB card (use --gradient-checkpointing and FSDP there). Rows record
gradient_checkpointing and ratios are only taken between rows with the same setting.
``--gradient-checkpointing-both`` runs every (shape, method) without and then with it (each in
its own process), and reports what checkpointing saves per method beside issue 13's goals: 7B
LoRA at most 16 GiB, 7B QLoRA at most 8 GiB, LoRA at most 0.3x full's memory.

The research note saw 5 vs 16 min (7B) and 7 vs 59 min (13B) per epoch, with LoRA at about
25% of the memory. Full fine-tuning here is pure bf16 AdamW (no fp32 master weights), as in
LLaMA-Factory's "full bf16" row.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
METHODS = ["lora", "qlora", "full"]
GOALS_GIB = {("7b", "lora"): 16.0, ("7b", "qlora"): 8.0}  # issue 13, peak memory
GOAL_LORA_VS_FULL = 0.3


def quantize_decoder_linears(model: Any, compute_dtype: Any) -> int:
    """Replace every nn.Linear in the decoder layers with an NF4 bitsandbytes Linear4bit holding
    the same weights (double quantization, ``compute_dtype`` compute, uint8 storage: the
    trainer's BitsAndBytesConfig), quantized where the weight lies. Flags the model as
    transformers' bitsandbytes quantizer does, so peft dispatches its 4-bit LoRA layers and
    prepare_model_for_kbit_training treats it as a k-bit model. Returns the number replaced."""
    import bitsandbytes as bnb
    import torch

    replaced = 0
    for layer in model.model.layers:
        names = [name for name, module in layer.named_modules() if type(module) is torch.nn.Linear]
        for name in names:
            linear = layer.get_submodule(name)
            parent_name, _, child = name.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            quantized = bnb.nn.Linear4bit(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
                quant_storage=torch.uint8,
                device="meta",
            )
            weight = bnb.nn.Params4bit(
                linear.weight.data,
                requires_grad=False,
                compress_statistics=True,
                quant_type="nf4",
                quant_storage=torch.uint8,
                module=quantized,
            )
            quantized.weight = weight.to(linear.weight.device)  # quantizes; sets quantized.quant_state
            if linear.bias is not None:
                quantized.bias = linear.bias
            setattr(parent, child, quantized)
            del linear, weight  # the bf16 weight goes with its last reference
            replaced += 1
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    model.quantization_method = "bitsandbytes"
    return replaced


def worker(shape: str, method: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.common.prompts import EncodedExample
    from services.trainer.config import TrainConfig
    from services.trainer.loop import LoopHooks, run_loop
    from services.trainer.memory import read_peak, reset_peak
    from services.trainer.modeling import _wrap_lora, count_parameters

    device = args.device
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
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
    build_peak = None
    if method == "qlora":
        quantize_decoder_linears(model, compute_dtype=dtype)
        build_peak, _ = read_peak(device)  # bf16 build plus quantization
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        reset_peak(device)  # from here: a 4-bit model in memory, as a 4-bit checkpoint loads
    if args.gradient_checkpointing:  # as modeling.load_for_training does
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if method == "full":
        model.requires_grad_(True)
    else:
        model = _wrap_lora(config, model)  # qlora: prepare_model_for_kbit_training first
    trainable, total = count_parameters(model)
    resident = torch.cuda.memory_allocated() if cuda else None
    generator = torch.Generator().manual_seed(0)
    examples = [
        EncodedExample(
            torch.randint(3, 32000, (args.seq_len,), generator=generator).tolist(), args.seq_len // 2
        )
        for _ in range(args.batch_size * args.steps)
    ]
    stamps: list[float] = []

    def on_step(_: object) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    result = run_loop(model, examples, config.optim, 0, None, "gpu-bench", hooks=LoopHooks(on_step=on_step))
    per_step = [b - a for a, b in itertools.pairwise(stamps)][2:]  # two warm-up steps
    peak, kind = read_peak(device)
    return {
        "shape": shape,
        "method": method,
        "gradient_checkpointing": args.gradient_checkpointing,
        "trainable": trainable,
        "total": total,
        "peak_bytes": peak,
        "peak_kind": kind,
        "peak_from": "after 4-bit quantization" if method == "qlora" else "before the bf16 build",
        "build_peak_bytes": build_peak,
        "resident_bytes_before_training": resident,
        "reserved_peak_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "seconds_per_step": sorted(per_step)[len(per_step) // 2],
        "timed_steps": len(per_step),
        "tokens_per_step": args.batch_size * args.seq_len,
        "loss_first": result.losses[0] if result.losses else None,
        "loss_last": result.losses[-1] if result.losses else None,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
    }


def jobs(
    shapes: list[str], methods: list[str], checkpointing: tuple[bool, ...] = (False,)
) -> list[tuple[str, str, bool]]:
    """lora and full (in the order asked) for every shape, then qlora for every shape; each
    with every checkpointing setting asked (off before on)."""
    first = [(shape, method) for shape in shapes for method in methods if method != "qlora"]
    order = first + [(shape, "qlora") for shape in shapes if "qlora" in methods]
    return [(shape, method, gc) for shape, method in order for gc in checkpointing]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["7b", "13b"], choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--gradient-checkpointing-both",
        action="store_true",
        help="Every (shape, method) without and with gradient checkpointing.",
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--epoch-examples", type=int, default=1000, help="Examples per epoch for the min/epoch column."
    )
    parser.add_argument("--json", type=Path, help="Write the rows (and failures) here, after each run.")
    parser.add_argument(
        "--worker-timeout", type=float, default=0, help="Seconds one (shape, method) may take (0: no limit)."
    )
    parser.add_argument("--worker", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # prints its row as the last stdout line and writes nothing else
        print(json.dumps(worker(args.worker[0], args.worker[1], args)))
        return
    if args.steps < 4:
        parser.error("--steps must be at least 4 (the first steps are warm-up, not timed)")
    rows: list[dict] = []
    failures: list[dict] = []
    if args.json:
        _write_json(args.json, rows, failures, args)
    signal.signal(signal.SIGTERM, _stop)  # `timeout`: report what finished, then exit
    current = None
    settings = (False, True) if args.gradient_checkpointing_both else (args.gradient_checkpointing,)
    try:
        for current in jobs(args.shapes, args.methods, settings):
            shape, method, checkpointing = current
            print(f"== {shape} {method}{' (gradient checkpointing)' if checkpointing else ''}", flush=True)
            if (
                method == "qlora"
                and args.device == "cpu"
                and importlib.util.find_spec("bitsandbytes") is None
            ):
                print("   skipped: qlora needs bitsandbytes (4-bit), which is not installed here", flush=True)
                continue
            started = time.perf_counter()
            row, failure = _run_worker(shape, method, checkpointing, args)
            if row is not None:
                rows.append(row)
                print(
                    f"   {row['peak_bytes'] / 2**30:.1f} GiB peak, {row['seconds_per_step']:.3f} s/step, "
                    f"loss {row['loss_first']:.3f} -> {row['loss_last']:.3f} "
                    f"({time.perf_counter() - started:.0f} s with start-up)",
                    flush=True,
                )
            if failure is not None:
                failures.append(failure)
            if args.json:
                _write_json(args.json, rows, failures, args)
    except _Stopped:
        if current is not None:
            failures.append(
                {
                    "shape": current[0],
                    "method": current[1],
                    "gradient_checkpointing": current[2],
                    "error": "stopped by SIGTERM",
                }
            )
        if args.json:
            _write_json(args.json, rows, failures, args)
        print("\nstopped (SIGTERM): the rows finished so far", flush=True)
        report(rows, args)
        sys.exit(143)
    report(rows, args)


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def _run_worker(
    shape: str, method: str, checkpointing: bool, args: argparse.Namespace
) -> tuple[dict | None, dict | None]:
    """(row, None) or (None, failure), printing why a worker failed."""
    passed = [
        a for a in sys.argv[1:] if a not in ("--gradient-checkpointing", "--gradient-checkpointing-both")
    ]
    command = [sys.executable, __file__, "--worker", shape, method, *passed]
    command += ["--gradient-checkpointing"] if checkpointing else []
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=args.worker_timeout or None,
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
        error = f"timed out after {args.worker_timeout:g} s"
        print(f"   failed: {error}", flush=True)
        return None, {
            "shape": shape,
            "method": method,
            "gradient_checkpointing": checkpointing,
            "error": error,
        }
    row = _row(done)
    if row is not None:
        return row, None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    error = lines[-1] if lines else f"exit status {done.returncode}"
    print(f"   failed (exit status {done.returncode}): {error}", flush=True)
    for line in lines[-12:-1]:
        print(f"   | {line}", flush=True)
    return None, {
        "shape": shape,
        "method": method,
        "gradient_checkpointing": checkpointing,
        "returncode": done.returncode,
        "error": error,
    }


def _row(done: subprocess.CompletedProcess) -> dict | None:
    if done.returncode != 0:
        return None
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def _write_json(path: Path, rows: list[dict], failures: list[dict], args: argparse.Namespace) -> None:
    settings = {
        key: getattr(args, key)
        for key in (
            "steps",
            "batch_size",
            "seq_len",
            "rank",
            "targets",
            "gradient_checkpointing",
            "gradient_checkpointing_both",
            "device",
        )
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "rows": rows, "failures": failures}, indent=2) + "\n")


def report(rows: list[dict], args: argparse.Namespace) -> None:
    gib = 2**30
    steps_per_epoch = args.epoch_examples / args.batch_size
    print(
        f"\nbatch {args.batch_size} x {args.seq_len} tokens, {args.steps} steps (2 warm-up), "
        f"rank {args.rank} on {args.targets}"
    )
    print(
        f"{'shape':<6}{'method':<7}{'gc':<4}{'trainable':>15}{'peak GiB':>10}{'s/step':>9}"
        f"{'min/epoch*':>12}{'loss first/last':>18}"
    )
    for row in rows:
        minutes = row["seconds_per_step"] * steps_per_epoch / 60
        gc = "yes" if row.get("gradient_checkpointing") else "no"
        print(
            f"{row['shape']:<6}{row['method']:<7}{gc:<4}{row['trainable']:>15,}{row['peak_bytes'] / gib:>10.1f}"
            f"{row['seconds_per_step']:>9.3f}{minutes:>12.1f}{row['loss_first']:>9.3f}/{row['loss_last']:<8.3f}"
        )
    print(f"* an epoch of {args.epoch_examples} examples (guanaco-llama2-1k has 1,000)")
    for row in rows:
        if row["method"] == "qlora" and row.get("build_peak_bytes") is not None:
            print(
                f"{row['shape']} qlora: peak counted after 4-bit quantization; "
                f"{row['build_peak_bytes'] / gib:.1f} GiB while the bf16 model was built and quantized"
            )
    by_key = {(r["shape"], r["method"], bool(r.get("gradient_checkpointing"))): r for r in rows}
    for shape, gc in itertools.product(args.shapes, (False, True)):
        full = by_key.get((shape, "full", gc))
        if not full:
            continue
        for method, label in (("lora", "LoRA"), ("qlora", "QLoRA")):
            other = by_key.get((shape, method, gc))
            if other:
                ratio = other["peak_bytes"] / full["peak_bytes"]
                verdict = (
                    f" (goal <= {GOAL_LORA_VS_FULL}x: {'met' if ratio <= GOAL_LORA_VS_FULL else 'NOT met'})"
                )
                print(
                    f"{shape}{' (gc)' if gc else ''}: {label} / full memory {ratio:.2f}x"
                    f"{verdict if method == 'lora' else ''}, "
                    f"time {other['seconds_per_step'] / full['seconds_per_step']:.2f}x"
                )
    report_checkpointing(by_key)


def report_checkpointing(by_key: dict[tuple[str, str, bool], dict]) -> None:
    """Per (shape, method) run both ways: what checkpointing saves and costs; the goals."""
    gib = 2**30
    for (shape, method, gc), row in sorted(by_key.items()):
        off = by_key.get((shape, method, False))
        if gc and off:
            print(
                f"{shape} {method}: gradient checkpointing {row['peak_bytes'] / gib:.1f} vs "
                f"{off['peak_bytes'] / gib:.1f} GiB ({row['peak_bytes'] / off['peak_bytes']:.2f}x), "
                f"{row['seconds_per_step'] / off['seconds_per_step']:.2f}x time per step"
            )
        goal = GOALS_GIB.get((shape, method))
        if goal is not None:
            peak = row["peak_bytes"] / gib
            print(
                f"{shape} {method}{' (gc)' if gc else ''}: peak {peak:.1f} GiB, goal <= {goal:g} GiB: "
                f"{'met' if peak <= goal else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
