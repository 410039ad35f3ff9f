#!/usr/bin/env bash
# One GPU check, run once on the device machine from the repository root:
#
#     bash bench/gpu_check.sh
#
# Needs: the wheels in .whl/ (carried: pydantic, pydantic_core, pydantic_settings, python_dotenv,
# sqlalchemy, annotated_types, typing_inspection, alembic, mako, peft, bitsandbytes) and $OUT,
# the folder whose files come back. Budget: about 8 minutes in all: the FSDP check first (at
# most 150 s), the trainer's QLoRA check (at most 100 s), then the benchmark, which ends by
# BENCH_DEADLINE_S (480 s after the start; `timeout` enforces it). It took 5.5 min on an H200.
#
# Files in $OUT (at most 8):
#   gpu_fsdp.log, gpu_fsdp.json     bench/gpu_trainer_check.py --launch fsdp: output and rows
#   gpu_qlora.log, gpu_qlora.json   bench/gpu_trainer_check.py --launch single --methods qlora
#   env.txt                 GPU, Python and package versions (and where each is imported from)
#   gpu_train.log           bench/gpu_train.py's output (and the fallback run's, if any)
#   gpu_train.json          its rows (rewritten after each run, so a cut-short run keeps them)
#   gpu_train_13b_gc.json   only if 13b full failed and time was left: 13b lora and full with
#                           gradient checkpointing
set -uo pipefail

SECONDS=0
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
BENCH_DEADLINE_S=${BENCH_DEADLINE_S:-480}
left() { echo $((BENCH_DEADLINE_S - SECONDS)); }

echo "== install wheels ($(date -u +%H:%M:%S) UTC)"
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl; then
    echo "pip failed: unpacking the wheels instead"
    for wheel in .whl/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site; done
fi
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Less fragmentation for 13b full (~121 GiB allocated); max_memory_allocated is unaffected.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
echo "installed in ${SECONDS} s"

echo "== environment"
{
    nvidia-smi -L
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # Versions from the installed metadata, without importing (each worker pays for that).
    python3 -c '
import importlib.metadata as metadata
import importlib.util
import sys

print("python", sys.version.split()[0])
for name in ("torch", "transformers", "accelerate", "peft", "bitsandbytes", "pydantic", "sqlalchemy"):
    spec = importlib.util.find_spec(name)
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = "?"
    print(name, version, spec.origin if spec else "NOT FOUND")
'
} 2>&1 | tee "$OUT/env.txt"

echo "== FSDP trainer check: accelerate launch with deploy/accelerate/fsdp.yaml ($(left) s left)"
# The trainer's sharded path end to end on CUDA/NCCL, one process per GPU: LoRA and full jobs
# through `hsig train run`, then what was published is loaded afresh and scored.
timeout -k 10 150 python3 bench/gpu_trainer_check.py --launch fsdp --methods lora full \
    --json "$OUT/gpu_fsdp.json" 2>&1 | tee "$OUT/gpu_fsdp.log"
echo "gpu_trainer_check.py (fsdp) exit status ${PIPESTATUS[0]} at ${SECONDS} s"

echo "== QLoRA through the trainer: hsig train run, one process ($(left) s left)"
# The trainer's own 4-bit path (from_pretrained with BitsAndBytesConfig), which the CPU suite
# cannot run; the adapter it publishes is scored again on a plain base.
timeout -k 10 100 python3 bench/gpu_trainer_check.py --launch single --methods qlora \
    --json "$OUT/gpu_qlora.json" 2>&1 | tee "$OUT/gpu_qlora.log"
echo "gpu_trainer_check.py (single qlora) exit status ${PIPESTATUS[0]} at ${SECONDS} s"

echo "== bench/gpu_train.py: 7b and 13b, lora and full, then qlora ($(left) s left)"
# gpu_train.py runs lora and full for both shapes first and qlora last; each (shape, method) is
# its own process, so one failing does not stop the others. At the deadline `timeout` stops it
# (exit status 124) and it prints the rows it finished; gpu_train.json holds them already.
timeout -k 10 "$(($(left) > 60 ? $(left) : 60))" python3 bench/gpu_train.py --shapes 7b 13b \
    --methods lora qlora full --steps 12 --worker-timeout 120 --json "$OUT/gpu_train.json" 2>&1 |
    tee "$OUT/gpu_train.log"
echo "gpu_train.py exit status ${PIPESTATUS[0]} at ${SECONDS} s"

# 13b full should fit without gradient checkpointing (see gpu_train.py's docstring); if it did
# not, measure 13b lora and full with it, as a pair, while time is left.
if ! python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
sys.exit(0 if any(r["shape"] == "13b" and r["method"] == "full" for r in rows) else 1)
' "$OUT/gpu_train.json" 2>/dev/null; then
    if [ "$(left)" -ge 100 ]; then
        methods="lora full"
    elif [ "$(left)" -ge 55 ]; then
        methods="full"
    else
        methods=""
    fi
    if [ -n "$methods" ]; then
        echo "== fallback: 13b $methods with --gradient-checkpointing ($(left) s left)" |
            tee -a "$OUT/gpu_train.log"
        # shellcheck disable=SC2086  # methods is a list of words
        timeout -k 10 "$(left)" python3 bench/gpu_train.py --shapes 13b --methods $methods \
            --gradient-checkpointing --steps 12 --worker-timeout 120 \
            --json "$OUT/gpu_train_13b_gc.json" 2>&1 | tee -a "$OUT/gpu_train.log"
    else
        echo "== no 13b full row, and too little time left for the gradient-checkpointing fallback"
    fi
fi
echo "== benchmark part done at ${SECONDS} s"

