"""Bad jobs fail with a clear error before any training starts, and nothing is published."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.errors import InvalidInput, OperationalError
from services.common.schemas import AdapterManifest
from services.trainer.config import TrainConfig
from services.trainer.publish import publish
from services.trainer.settings import TrainerSettings
from services.trainer.training import train
from tests.conftest import REPO_ROOT
from tests.trainer.conftest import lora_config
from tests.trainer.planted import planted_rows, write_jsonl


def assert_nothing_published(settings: TrainerSettings) -> None:
    adapters = settings.adapters_path
    leftovers = [p for p in adapters.rglob("*") if p.is_file()] if adapters.exists() else []
    assert leftovers == []
    with session_scope(settings.resolved_database_url) as session:
        assert session.scalar(select(func.count()).select_from(Adapter)) == 0


def raw_config(rows: Path, tiny: Path, **overrides: object) -> dict:
    raw = lora_config(rows, tiny).model_dump(mode="json")
    raw.update(overrides)
    return raw


CASES = {
    "unknown hub id offline": ({"base_model": "llama-2-7b"}, "can be loaded here"),
    "missing directory": ({"base_model": "/nonexistent/model"}, "does not exist"),
    "rank above the model's size": ({"lora": {"r": 129}}, "LoRA rank 129 is larger than the model allows"),
    "unknown target module": ({"lora": {"target_modules": ["w_nope"]}}, "target modules"),
    "overlapping windows": (
        {
            "data": {
                "train": {"start": "2020-01-01T00:00:00Z", "end": "2020-01-10T00:00:00Z"},
                "validation": {"start": "2020-01-09T00:00:00Z", "end": "2020-01-15T00:00:00Z"},
            }
        },
        "overlap",
    ),
    "embargo shorter than a label": (
        {"data": {"embargo_seconds": 60}},
        "shorter than the longest label span",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_jobs_fail_before_training(
    case: str, trainer_settings: TrainerSettings, planted_file: Path, tiny_model_dir: Path
) -> None:
    overrides, message = CASES[case]
    raw = raw_config(planted_file, tiny_model_dir)
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    trained = []
    from services.trainer import loop

    original = loop.run_loop
    with pytest.MonkeyPatch.context() as patch:  # a spy: proves no step ever ran
        patch.setattr(
            "services.trainer.training.run_loop", lambda *a, **k: trained.append(1) or original(*a, **k)
        )
        with pytest.raises(InvalidInput, match=message):
            train(TrainConfig.model_validate(raw), trainer_settings)
    assert trained == []
    assert_nothing_published(trainer_settings)


def test_a_single_class_window_is_refused(
    trainer_settings: TrainerSettings, tmp_path: Path, tiny_model_dir: Path
) -> None:
    rows = planted_rows(100)
    for row in rows:
        row["label"] = "Decrease"
    config = lora_config(write_jsonl(rows, tmp_path / "down.jsonl"), tiny_model_dir)
    with pytest.raises(InvalidInput, match="one class only"):
        train(config, trainer_settings)
    assert_nothing_published(trainer_settings)


def test_an_empty_database_window_is_refused(trainer_settings: TrainerSettings, tiny_model_dir: Path) -> None:
    config = TrainConfig.model_validate({"name": "empty", "base_model": str(tiny_model_dir)})
    with pytest.raises(InvalidInput, match="no Increase/Decrease rows"):
        train(config, trainer_settings)
    assert_nothing_published(trainer_settings)


def test_a_malformed_corpus_line_is_refused(
    trainer_settings: TrainerSettings, tmp_path: Path, tiny_model_dir: Path
) -> None:
    corpus = tmp_path / "chat.jsonl"
    corpus.write_text(json.dumps({"text": "<s>[INST] Hi [/INST] Hello </s>"}) + "\n" + '{"text": 5}\n')
    config = TrainConfig.model_validate(
        {"name": "chat", "task": "chat", "base_model": str(tiny_model_dir), "data": {"path": str(corpus)}}
    )
    with pytest.raises(InvalidInput, match="line 2"):
        train(config, trainer_settings)
    assert_nothing_published(trainer_settings)


def test_qlora_without_a_gpu_is_refused_first(trainer_settings: TrainerSettings) -> None:
    config = TrainConfig.model_validate({"name": "q", "method": "qlora", "base_model": "/nonexistent"})
    with pytest.raises(InvalidInput, match="QLoRA needs a CUDA GPU"):  # before even the base is looked at
        train(config, trainer_settings)
    assert_nothing_published(trainer_settings)


def test_a_failed_write_leaves_nothing_behind(trainer_settings: TrainerSettings) -> None:
    manifest = AdapterManifest(name="broken", base_model="tiny", method="lora", task="btc-trend")

    def write_then_fail(directory: Path) -> None:
        (directory / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(
            trainer_settings.resolved_database_url,
            trainer_settings.adapters_path,
            manifest,
            write_then_fail,
            {},
        )
    assert_nothing_published(trainer_settings)

    def write_pickle(directory: Path) -> None:
        from services.trainer.publish import save_weights

        class Model:
            def save_pretrained(self, path: Path, **_: object) -> None:
                (path / "pytorch_model.bin").write_bytes(b"pickle")

        save_weights(Model(), None, directory, full=False)

    with pytest.raises(OperationalError, match="safetensors only"):
        publish(
            trainer_settings.resolved_database_url, trainer_settings.adapters_path, manifest, write_pickle, {}
        )
    assert_nothing_published(trainer_settings)


def test_the_cli_reports_bad_input_in_one_line(
    settings_env: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"name": "bad", "base_model": str(tiny_model_dir), "lora": {"r": 512}}))
    for path, code, message in (
        (config, 2, "LoRA rank 512"),
        (tmp_path / "missing.json", 2, "does not exist"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "services.pipeline.cli", "train", "run", str(path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == code
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("hsig: error:") and message in last
