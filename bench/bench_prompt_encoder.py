"""The scorer's prompt tokenising: ``PromptEncoder`` (the fast tokenizer's Rust backend) against
the transformers ``__call__`` it replaced (issue 17), on the tiny model's tokenizer and the
bundled headlines' prompts; one prompt (a single-item request) and 64 (a full batch).

    OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_prompt_encoder.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.bench_inference import HEADLINES  # noqa: E402

REPEATS = 7  # timings per case, alternating the two ways; the median is printed


def _per_call_us(call: Callable[[], object], seconds: float = 0.5) -> float:
    call()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        count += 1
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    from transformers import AutoTokenizer

    from services.common.prompts import btc_trend_prompt
    from services.common.tiny_model import build_tiny_model
    from services.inference.scorer import PromptEncoder

    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as tmp:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(Path(tmp) / "tiny-llama"))
    start = datetime(2021, 5, 3, 9, 0, tzinfo=UTC)
    prompts = [btc_trend_prompt(text, start + timedelta(minutes=i)) for i, text in enumerate(HEADLINES[:64])]
    encoder = PromptEncoder(tokenizer)
    assert encoder.uses_backend, "the tiny tokenizer should take the backend path"
    for size in (1, 64):
        batch = prompts[:size]
        assert encoder(batch) == tokenizer(batch, add_special_tokens=False)["input_ids"]
        before, after = [], []
        for _ in range(REPEATS):
            before.append(_per_call_us(lambda b=batch: tokenizer(b, add_special_tokens=False)["input_ids"]))
            after.append(_per_call_us(lambda b=batch: encoder(b)))
        old, new = statistics.median(before), statistics.median(after)
        print(
            f"{size:2d} prompt{'s' if size > 1 else ' '}: tokenizer __call__ {old:8.1f} µs, "
            f"PromptEncoder {new:8.1f} µs, {old / new:.2f}x (median of {REPEATS}, alternated)"
        )


if __name__ == "__main__":
    main()
