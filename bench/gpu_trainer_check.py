"""The trainer end to end on a GPU, as a user runs it: `hsig train run` on the planted-rule
rows (the suite's trainer data) with the tiny Llama, then the published weights loaded in a
fresh process with transformers and peft and scored on the held-out rows. Prints one JSON line
per job and a summary; fails unless every job publishes weights that score at least 0.9.

    python bench/gpu_trainer_check.py                       # FSDP, every GPU, LoRA and full
    python bench/gpu_trainer_check.py --launch single --methods qlora lora   # one process
    python bench/gpu_trainer_check.py --launcher torchrun --cpu --processes 2   # without a GPU

`--launch fsdp` (the default) runs `accelerate launch --config_file deploy/accelerate/fsdp.yaml`,
one process per GPU, over NCCL; the suite (tests/trainer/test_distributed.py) runs the same
code with CPU processes over gloo. `--launch single` is a plain `hsig train run`, the only
way QLoRA runs (bitsandbytes 4-bit needs CUDA, so the suite cannot). A check, not a
benchmark: it prints no speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
FSDP_CONFIG = REPO_ROOT / "deploy" / "accelerate" / "fsdp.yaml"


def launch_command(args: argparse.Namespace, job: Path) -> tuple[list[str], dict[str, str]]:
    from services.pipeline.processes import free_port
    from services.trainer.distributed import accelerate_launch_env

    target = ["-m", "services.pipeline.cli", "train", "run", str(job)]
    if args.launch == "single":
        return [sys.executable, *target], {}
    port = str(free_port())
    if args.launcher == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG)]
        command += ["--num_processes", str(args.processes), "--main_process_port", port]
        return command + target, {}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes)]
    command += ["--master_addr", "127.0.0.1", "--master_port", port]
    env = accelerate_launch_env(FSDP_CONFIG)  # what `accelerate launch` would have set
    if args.cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    return command + target, env


def run_job(args: argparse.Namespace, method: str, work: Path, rows: Path, model_dir: Path) -> dict:
    """One job as the suite's trainer tests define it (tests/trainer/conftest.py), launched as
    asked; what it published is scored again here (tests/trainer/test_training.py)."""
    from services.common.schemas import AdapterManifest
    from tests.trainer.conftest import FULL_OPTIM, LORA_OPTIM, lora_config
    from tests.trainer.test_training import published_accuracy

    name = f"{args.launch}-{method}"
    optim = FULL_OPTIM if method == "full" else LORA_OPTIM
    config = lora_config(rows, model_dir, name=name, method=method, optim=optim)
    job = work / f"{name}.json"
    job.write_text(config.model_dump_json())
    command, launch_env = launch_command(args, job)
    env = {**os.environ, **launch_env, "HSIG_DATA_DIR": str(work / "var"), "HSIG_INFERENCE_URL": ""}
    env["HSIG_DATABASE_URL"] = f"sqlite:///{work / 'var' / 'db.sqlite'}"
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    row: dict = {"method": method, "returncode": done.returncode, "seconds": time.perf_counter() - started}
    if done.returncode != 0:
        row["error"] = (done.stderr.strip().splitlines() or ["(no stderr)"])[-12:]
        return row
    published = work / "var" / "adapters" / name / "v1"
    manifest = AdapterManifest.model_validate_json((published / "manifest.json").read_text())
    extra = manifest.extra
    row.update(
        processes=extra["processes"],
        parallelism=extra["parallelism"],
        device=extra["device"],
        dtype=extra["dtype"],
        peak_memory_gib=manifest.peak_memory_bytes / 2**30,
        peak_memory_kind=manifest.peak_memory_kind,
        accuracy_on_ranks=extra["evaluation"]["accuracy"],
        accuracy_published=published_accuracy(published, model_dir, rows, manifest),
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--launch", choices=["fsdp", "single"], default="fsdp")
    parser.add_argument("--launcher", choices=["accelerate", "torchrun"], default="accelerate")
    parser.add_argument("--processes", type=int, default=0, help="Default: every visible GPU.")
    parser.add_argument("--cpu", action="store_true", help="CPU processes over gloo (torchrun only).")
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "qlora", "full"])
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()
    import torch

    from services.common.db.migrate import upgrade
    from services.common.tiny_model import build_tiny_model
    from tests.trainer.planted import planted_rows, write_jsonl

    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: pass --cpu --launcher torchrun for the CPU check")
    if args.cpu and args.launch == "fsdp" and args.launcher == "accelerate":
        parser.error("accelerate's FSDP launcher needs GPUs: use --launcher torchrun with --cpu")
    if args.launch == "fsdp" and "qlora" in args.methods:
        parser.error("QLoRA cannot be sharded: use --launch single for it")
    args.processes = 1 if args.launch == "single" else args.processes
    args.processes = args.processes or (2 if args.cpu else torch.cuda.device_count())
    print(f"trainer check: {args.launch}, {args.processes} process(es), cpu={args.cpu}", flush=True)
    with tempfile.TemporaryDirectory(prefix="trainer-check-") as tmp:
        work = Path(tmp)
        (work / "var").mkdir()
        upgrade(f"sqlite:///{work / 'var' / 'db.sqlite'}")
        model_dir = build_tiny_model(work / "tiny-llama")
        rows = write_jsonl(planted_rows(400), work / "planted.jsonl")
        results = []
        for method in args.methods:
            print(f"== {method}", flush=True)
            results.append(run_job(args, method, work, rows, model_dir))
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ok = all(r["returncode"] == 0 and r["accuracy_published"] >= 0.9 for r in results)
    print("trainer check:", "passed" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
