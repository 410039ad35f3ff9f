"""Real training on the tiny model: LoRA learns the planted rule, full fine-tuning runs,
and what is published is complete, safetensors-only and registered."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.prompts import TREND_LABELS, bos_id_of
from services.common.schemas import AdapterManifest
from services.common.scoring import best_label, score_with_transformers
from services.trainer.config import TrainConfig
from services.trainer.datasets import load_rows_from_file
from services.trainer.publish import weights_sha256
from services.trainer.settings import TrainerSettings
from services.trainer.training import train
from tests.trainer.conftest import FULL_OPTIM, lora_config

pytestmark = pytest.mark.slow


def held_out_rows(planted_file: Path, manifest: AdapterManifest) -> list:
    """Rows after the training window and its embargo: what the adapter never saw."""
    cutoff = manifest.training_window.end_with_embargo()
    return [row for row in load_rows_from_file(planted_file) if row.headline_time >= cutoff]


def accuracy(model, tokenizer, rows) -> float:  # type: ignore[no-untyped-def]
    from services.common.prompts import btc_trend_prompt

    prompts = [btc_trend_prompt(r.headline, r.headline_time, r.market_situation) for r in rows]
    probabilities = score_with_transformers(
        model, tokenizer, prompts, TREND_LABELS, bos_id=bos_id_of(tokenizer)
    )
    return sum(best_label(p) == r.label for p, r in zip(probabilities, rows, strict=True)) / len(rows)


def published_accuracy(
    published: Path, base_dir: Path, planted_file: Path, manifest: AdapterManifest
) -> float:
    """Held-out accuracy of what was published, loaded afresh with plain transformers (a full
    model directory) or peft (an adapter on ``base_dir``)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if manifest.method == "full":
        model = AutoModelForCausalLM.from_pretrained(published)
    else:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), published)
    return accuracy(model, tokenizer, held_out_rows(planted_file, manifest))


def test_lora_learns_the_planted_rule(published_lora, planted_file: Path, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = published_lora.manifest
    assert manifest.extra["validation_loss_after"] < manifest.extra["validation_loss_before"]
    assert manifest.extra["evaluation"]["accuracy"] >= 0.9
    # Score again, independently, with plain peft loading the published directory.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), published_lora.path
    )
    rows = held_out_rows(planted_file, manifest)
    assert len(rows) >= 100
    assert accuracy(model, tokenizer, rows) >= 0.9
    with model.disable_adapter():
        assert accuracy(model, tokenizer, rows) < 0.75  # the untrained base does not know the rule


def test_the_published_adapter_is_complete_and_registered(
    published_lora, session_trainer_settings: TrainerSettings
) -> None:  # type: ignore[no-untyped-def]
    path: Path = published_lora.path
    assert path == session_trainer_settings.adapters_path / "planted-lora" / "v1"
    files = {p.name for p in path.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
        "training_config.json",
    } <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth"))]
    manifest = AdapterManifest.model_validate_json((path / "manifest.json").read_text())
    assert manifest.weights_sha256 == weights_sha256(path)
    assert 0 < manifest.trainable_parameters < manifest.total_parameters
    assert manifest.peak_memory_kind == "cpu_peak_rss" and manifest.peak_memory_bytes > 100 * 2**20
    assert manifest.tokens_per_second > 0 and manifest.seconds_per_epoch > 0 and manifest.train_seconds > 0
    assert manifest.training_window.embargo_seconds == 3600
    assert manifest.extra["class_balance"]["train"]["Increase"] > 0
    assert not list((session_trainer_settings.adapters_path / ".staging").iterdir())
    with session_scope(session_trainer_settings.resolved_database_url) as session:
        row = session.scalars(select(Adapter).where(Adapter.name == "planted-lora")).one()
    assert row.version == 1 and Path(row.path) == path.resolve() and row.sha256 == manifest.weights_sha256
    assert row.manifest["training_window"]["embargo_seconds"] == 3600


def test_full_fine_tuning_runs_and_publishes_a_model(
    session_trainer_settings: TrainerSettings, planted_file: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    config = lora_config(
        planted_file,
        tiny_model_dir,
        name="planted-full",
        method="full",
        optim=FULL_OPTIM,
    )
    published = train(config, session_trainer_settings)
    manifest = published.manifest
    assert manifest.lora is None and manifest.trainable_parameters == manifest.total_parameters
    assert manifest.extra["validation_loss_after"] < manifest.extra["validation_loss_before"]
    AutoTokenizer.from_pretrained(published.path)  # a complete model directory carries its tokenizer
    assert published_accuracy(published.path, tiny_model_dir, planted_file, manifest) >= 0.9


def test_publishing_registers_new_versions(
    trainer_settings: TrainerSettings, planted_file: Path, tiny_model_dir: Path
) -> None:
    config = lora_config(
        planted_file, tiny_model_dir, name="tiny-run", optim={"max_steps": 3, "batch_size": 4}
    )
    first = train(config, trainer_settings)
    second = train(config, trainer_settings)
    assert (first.version, second.version) == (1, 2)
    assert first.manifest.dataset_sha256 == second.manifest.dataset_sha256
    with session_scope(trainer_settings.resolved_database_url) as session:
        rows = session.scalars(
            select(Adapter).where(Adapter.name == "tiny-run").order_by(Adapter.version)
        ).all()
    assert [(r.version, Path(r.path)) for r in rows] == [
        (1, first.path.resolve()),
        (2, second.path.resolve()),
    ]
    assert TrainConfig.model_validate_json((second.path / "training_config.json").read_text()) == config


def test_the_tiny_preset_records_a_base_the_inference_service_serves(
    session_trainer_settings: TrainerSettings, planted_file: Path
) -> None:
    from services.inference.registry import discover

    config = lora_config(
        planted_file, Path("unused"), name="preset-lora", optim={"max_steps": 2, "batch_size": 4}
    )
    published = train(config.model_copy(update={"base_model": "tiny"}), session_trainer_settings)
    base = Path(published.manifest.base_model)
    assert (base / "config.json").is_file()  # the directory it trained from, not the preset's name
    records = discover(
        session_trainer_settings.resolved_database_url, session_trainer_settings.adapters_path, base.name, 16
    )
    assert records["preset-lora"].unservable is None
