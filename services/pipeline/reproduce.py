"""Reproduce the research note's comparison on the bundled 2017-2020 data, in one call.

The note fine-tuned Llama-2 with LoRA and with full fine-tuning and judged the Bitcoin-trend
task on a handful of headlines, finding the untuned model answering "Increase" for all. Here:
1. the bundled CNBC headlines and Coinbase hourly candles are ingested and labelled through
   the ingest service's own code paths (``services.pipeline.bundled``; skipped when labelled
   rows already exist);
2. the same base model is fine-tuned twice by the trainer, LoRA and full, on rows before
   ``train_end`` (validation window after it, separated by the label embargo);
3. the untuned base, both fine-tunes and every baseline are scored, through the inference
   service when one is given (``inference_url``: the full fine-tune by an engine of its own),
   otherwise in-process with the same scoring, on one out-of-time window that starts after both adapters' training
   window plus embargo, and reported with every figure of a backtest.
With the tiny local model the numbers say nothing about Llama-2, and the report says so;
``model`` takes a directory or Hugging Face id (a GPU host for 7B/13B) and nothing else
changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from services.backtest.runner import BacktestResult, run_backtest
from services.backtest.schemas import BASELINES, BacktestConfig, BaselineSpec, LocalSpec, ServiceSpec
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.migrate import upgrade
from services.common.db.models import LabelledRow
from services.common.errors import InvalidInput, OperationalError
from services.common.methods import TrainingMethod
from services.common.settings import CommonSettings, SettingsT, get_settings

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

TINY_DISCLAIMER = (
    "These figures come from the tiny local Llama-architecture model (2 layers, hidden 128, "
    "random initial weights, built on this machine because no weights can be downloaded): they "
    "show the pipeline works and say NOTHING about Llama-2 7B or 13B. Run the same command with "
    "--model <Llama-2 directory or Hugging Face id> on a GPU host for the real comparison."
)


@dataclass(frozen=True)
class ReproduceOptions:
    model: str = "tiny"
    train_end: datetime = datetime(2019, 10, 1, tzinfo=UTC)
    validation_end: datetime = datetime(2020, 1, 1, tzinfo=UTC)
    test_end: datetime | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    lora_learning_rate: float | None = None  # default: 5e-3 on the tiny model, 2e-4 otherwise
    full_learning_rate: float | None = None  # default: 1e-3 on the tiny model, 2e-5 otherwise
    batch_size: int = 8
    data_dir: Path = Path("data")
    ingest: bool | None = None  # None: only when no labelled rows exist
    bootstrap_reps: int | None = None
    seed: int = 0
    # Score base, LoRA and the full fine-tune through this inference service (told of each when
    # it is published) instead of in-process.
    inference_url: str | None = None
    inference_wait_seconds: float = 600.0


def _labelled_rows(url: str) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(func.count()).select_from(LabelledRow)) or 0)


def _ingest(settings: BacktestSettings, options: ReproduceOptions, say: Progress) -> None:
    from services.ingest.settings import IngestSettings
    from services.pipeline.bundled import ingest_bundled_data

    upgrade(settings.resolved_database_url)
    if options.ingest is False or (options.ingest is None and _labelled_rows(settings.resolved_database_url)):
        say("reproduce: labelled rows already stored; ingest skipped")
        return
    say(f"reproduce: ingesting and labelling the bundled data from {options.data_dir} ...")
    ingest_settings = IngestSettings.model_validate(
        settings.model_dump(include=set(IngestSettings.model_fields))
    )
    ingest_bundled_data(ingest_settings, options.data_dir, progress=say)


def _as(cls: type[SettingsT], settings: BacktestSettings) -> SettingsT:
    """Another service's settings sharing ours (database, data dir, symbol, horizons...)."""
    return get_settings(cls).model_copy(update=settings.model_dump(include=set(CommonSettings.model_fields)))


def _is_tiny(model_dir: str) -> bool:
    return (Path(model_dir) / "tiny_model_stamp.json").is_file()


def default_learning_rate(method: str, tiny: bool) -> float:
    """A fine-tune's rate unless one is given: one that trains every weight takes smaller steps.
    The tiny model, trained from random weights for a few steps, takes larger ones."""
    if TrainingMethod(method).trains_all_weights:
        return 1e-3 if tiny else 2e-5
    return 5e-3 if tiny else 2e-4


def _train(settings: BacktestSettings, options: ReproduceOptions, method: str, say: Progress) -> Any:
    from services.trainer.config import TrainConfig
    from services.trainer.settings import TrainerSettings
    from services.trainer.training import train

    tiny = options.model == "tiny"
    default_rate = default_learning_rate(method, tiny)
    chosen = options.lora_learning_rate if method == "lora" else options.full_learning_rate
    embargo = timedelta(hours=2)  # >= the longest label span of 1h labels (entry up to 1h after t)
    config = TrainConfig.model_validate(
        {
            "name": f"note-{method}",
            "base_model": options.model,
            "method": method,
            "data": {
                "source": "database",
                "train": {"end": options.train_end},
                "validation": {"start": options.train_end + embargo, "end": options.validation_end - embargo},
                "embargo_seconds": embargo.total_seconds(),
            },
            "optim": {
                "epochs": options.epochs,
                "max_steps": options.max_steps,
                "batch_size": options.batch_size,
                "learning_rate": chosen or default_rate,
                "seed": options.seed,
            },
        }
    )
    # Without an inference service the backtest scores the adapters in-process: nobody to notify.
    trainer_settings = _as(TrainerSettings, settings).model_copy(
        update={"inference_url": options.inference_url or ""}
    )
    say(f"reproduce: {method} fine-tuning of {options.model} on rows before {options.train_end.date()} ...")
    published = train(config, trainer_settings)
    manifest = published.manifest
    say(
        f"reproduce: {method} done in {manifest.train_seconds:.1f} s, {manifest.trainable_parameters:,} of "
        f"{manifest.total_parameters:,} parameters trained, peak memory {manifest.peak_memory_bytes / 2**20:.0f} MiB"
    )
    return published


def _training_note(method: str, manifest: Any) -> str:
    return (
        f"{method}: {manifest.train_seconds:.1f} s ({manifest.seconds_per_epoch:.1f} s/epoch), "
        f"{manifest.trainable_parameters:,} of {manifest.total_parameters:,} parameters trained, "
        f"peak memory {manifest.peak_memory_bytes / 2**20:.0f} MiB ({manifest.peak_memory_kind}), "
        f"trained on rows {manifest.training_window.first_row_time:%Y-%m-%d} to "
        f"{manifest.training_window.last_row_time:%Y-%m-%d}"
    )


def _await_served(url: str, name: str, timeout_seconds: float, say: Progress) -> None:
    """Wait until the inference service serves ``name`` (it loads it when notified, or on its
    registry poll if the notice came before it was up; a full model's own engine takes longest)."""
    import time

    import httpx

    say(f"reproduce: waiting for the inference service at {url} to serve {name} ...")
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            models = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=5).json().get("data", [])
        except (httpx.HTTPError, ValueError):
            models = []  # still starting
        card = next((model for model in models if model.get("id") == name), {})
        if card and card.get("status", "served") == "served":
            return
        if card.get("status") == "failed":
            raise OperationalError(
                f"the inference service at {url} cannot serve {name}: {card.get('reason')}"
            )
        time.sleep(2)
    raise OperationalError(
        f"the inference service at {url} did not serve {name} within {timeout_seconds:.0f} s"
    )


def reproduce(
    settings: BacktestSettings, options: ReproduceOptions, progress: Progress | None = None
) -> BacktestResult:
    """Ingest (if needed), fine-tune LoRA and full, and backtest them with the base and baselines."""
    say = progress or (lambda message: log.info("%s", message))
    if options.validation_end <= options.train_end:
        raise InvalidInput("validation_end must be after train_end", param="validation_end")
    _ingest(settings, options, say)
    lora = _train(settings, options, "lora", say)
    full = _train(settings, options, "full", say)
    base_dir = lora.manifest.base_model
    ends = [p.manifest.training_window.end_with_embargo() for p in (lora, full)]
    test_start = max([options.validation_end, *[end + timedelta(seconds=1) for end in ends if end]])
    notes = [TINY_DISCLAIMER] if options.model == "tiny" or _is_tiny(base_dir) else []
    notes += [
        "Research-note reproduction: untuned base, LoRA and full fine-tuning of the same base, and every "
        f"baseline, on one out-of-time window from {test_start.isoformat()}.",
        _training_note("LoRA", lora.manifest),
        _training_note("full fine-tuning", full.manifest),
    ]
    if options.inference_url:
        for published in (lora, full):
            _await_served(options.inference_url, published.name, options.inference_wait_seconds, say)
        served: list[ServiceSpec | LocalSpec] = [
            ServiceSpec(adapter="base", label="base (untuned)", url=options.inference_url),
            ServiceSpec(adapter=lora.name, label="LoRA", url=options.inference_url),
            ServiceSpec(adapter=full.name, label="full fine-tune", url=options.inference_url),
        ]
        notes.append(
            f"Base, LoRA and the full fine-tune scored by the inference service at {options.inference_url} "
            "(the full fine-tune by an engine of its own)."
        )
    else:
        served = [
            LocalSpec(model=base_dir, label="base (untuned)"),
            LocalSpec(model=base_dir, adapter_dir=str(lora.path), label="LoRA"),
            LocalSpec(model=base_dir, adapter_dir=str(full.path), label="full fine-tune"),
        ]
    config = BacktestConfig(
        title=f"Research-note reproduction ({options.model})",
        start=test_start,
        end=options.test_end,
        predictors=[
            *served,
            *[BaselineSpec(name=name) for name in BASELINES],  # type: ignore[arg-type]
        ],
        bootstrap_reps=options.bootstrap_reps,
        seed=options.seed,
        notes=notes,
    )
    say(f"reproduce: scoring 3 models and {len(BASELINES)} baselines from {test_start.date()} ...")
    return run_backtest(settings, config, trigger="cli")
