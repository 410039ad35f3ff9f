"""Trainer fixtures: planted-rule rows, trainer settings on a test database, a trained adapter."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import get_settings
from services.trainer.config import TrainConfig
from services.trainer.settings import TrainerSettings
from tests.trainer.planted import planted_rows, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# DESIGN.md: LoRA on q_proj, v_proj, r=8, lr 5e-3, constant, reaches ~95% in 75 steps.
LORA_OPTIM = {"max_steps": 75, "batch_size": 8, "learning_rate": 5e-3, "schedule": "constant", "seed": 0}
# Full fine-tuning learns the same rule in fewer steps at a lower rate.
FULL_OPTIM = {"max_steps": 40, "batch_size": 8, "learning_rate": 1e-3}


@pytest.fixture(scope="session")
def planted_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(planted_rows(400), tmp_path_factory.mktemp("rows") / "planted.jsonl")


@pytest.fixture
def trainer_settings(
    settings_env: Path, db_url: str, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TrainerSettings]:
    """Settings on the test database (both dialects) with a fresh data dir and the tiny model."""
    monkeypatch.setenv("HSIG_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield get_settings(TrainerSettings)
    get_settings.cache_clear()


def lora_config(rows: Path, tiny: Path, name: str = "planted-lora", **overrides: object) -> TrainConfig:
    raw: dict = {
        "name": name,
        "base_model": str(tiny),
        "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"source": "file", "path": str(rows)},
        "optim": dict(LORA_OPTIM),
    }
    raw.update(overrides)
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="session")
def session_trainer_settings(tmp_path_factory: pytest.TempPathFactory) -> TrainerSettings:
    """Settings for session-scoped training runs: their own data dir and SQLite file."""
    from services.common.db.migrate import upgrade

    data_dir = tmp_path_factory.mktemp("trainer-var")
    settings = TrainerSettings(
        data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'db.sqlite'}", api_token="test-token"
    )
    upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="session")
def published_lora(session_trainer_settings: TrainerSettings, planted_file: Path, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The planted-rule LoRA adapter, trained once per session (about 5 s)."""
    from services.trainer.training import train

    return train(lora_config(planted_file, tiny_model_dir), session_trainer_settings)
