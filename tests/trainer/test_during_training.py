"""What a job reports while it trains, for each task, on the tiny model: validation loss every
``optim.eval_steps`` (and before the first and after the last step) in the manifest (history,
best, last) and in the job's TensorBoard event file, beside train loss and learning rate per
step; packing and gradient checkpointing recorded; and the event directory a queued job's API
answer names is where its runner writes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.common.schemas import AdapterManifest
from services.trainer import jobs
from services.trainer.app import build_app
from services.trainer.config import TrainConfig
from services.trainer.events import read_scalars
from services.trainer.job_process import run_claimed_job
from services.trainer.settings import TrainerSettings
from services.trainer.training import train
from tests.conftest import REPO_ROOT
from tests.trainer.conftest import lora_config
from tests.trainer.test_packing import short_chat_corpus

DAVIDSON = REPO_ROOT / "data" / "hate_speech_davidson" / "labeled_data.csv"
STEPS, EVERY = 4, 2


def _config(task: str, tmp_path: Path, planted_file: Path, tiny: Path) -> TrainConfig:
    optim = {"max_steps": STEPS, "batch_size": 4, "learning_rate": 2e-3, "eval_steps": EVERY}
    data: dict = {"source": "file", "path": str(planted_file)}
    if task == "chat":
        data = {"path": str(short_chat_corpus(tmp_path)), "max_length": 128, "packing": True}
        optim["gradient_checkpointing"] = True
    elif task == "implicit-hate":
        data = {"path": str(DAVIDSON), "max_examples": 80, "validation_fraction": 0.25}
    return lora_config(
        planted_file, tiny, name=f"during-{task}", task=task, data=data, optim=optim, max_eval_examples=20
    )


def _check_validation(manifest: AdapterManifest, steps: list[int]) -> list[float]:
    validation = manifest.extra["validation"]
    history = validation["history"]
    assert [entry["step"] for entry in history] == steps
    losses = [entry["loss"] for entry in history]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert validation["last"] == history[-1]
    assert validation["best"]["loss"] == min(losses)
    assert manifest.extra["validation_loss_before"] == losses[0]
    assert manifest.extra["validation_loss_after"] == losses[-1]
    return losses


def _check_events(directory: Path, total: int, validation: list[float], steps: list[int]) -> dict:
    scalars = read_scalars(directory)
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, total + 1))
    assert [step for step, _ in scalars["train/learning_rate"]] == list(range(1, total + 1))
    assert [step for step, _ in scalars["validation/loss"]] == steps
    for (_, written), expected in zip(scalars["validation/loss"], validation, strict=True):
        assert written == pytest.approx(expected, rel=1e-6)  # float32 in the file
    return scalars


@pytest.mark.parametrize("task", ["chat", "implicit-hate", "btc-trend"])
def test_each_task_evaluates_during_training_and_writes_events(
    task: str,
    session_trainer_settings: TrainerSettings,
    planted_file: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    config = _config(task, tmp_path, planted_file, tiny_model_dir)
    published = train(config, session_trainer_settings)
    manifest = published.manifest
    steps = [0, 2, 4]
    losses = _check_validation(manifest, steps)
    events = session_trainer_settings.data_dir / "jobs" / config.name / "tensorboard"
    assert manifest.extra["tensorboard_dir"] == str(events)
    scalars = _check_events(events, STEPS, losses, steps)
    assert all(value == pytest.approx(2e-3) for _, value in scalars["train/learning_rate"])
    assert manifest.extra["packing"] is (task == "chat")
    assert manifest.extra["gradient_checkpointing"] is (task == "chat")
    if task == "chat":
        packing = manifest.extra["notes"]["packing"]
        assert packing["blocks"] < packing["examples"]
        assert "eval/accuracy" not in scalars  # chat has no labels to score
    else:
        assert scalars["eval/accuracy"] == [(STEPS, pytest.approx(manifest.extra["evaluation"]["accuracy"]))]


def test_a_jobs_api_answer_names_its_event_directory(
    session_trainer_settings: TrainerSettings, planted_file: Path, tiny_model_dir: Path
) -> None:
    settings = session_trainer_settings.model_copy(update={"worker_enabled": False})
    config = lora_config(
        planted_file,
        tiny_model_dir,
        name="events-job",
        optim={"max_steps": 3, "batch_size": 4, "learning_rate": 2e-3},
        evaluate_accuracy=False,
    )
    with TestClient(build_app(settings)) as client:
        queued = client.post(
            "/v1/jobs", json=config.model_dump(mode="json"), headers={"Authorization": "Bearer test-token"}
        )
        assert queued.status_code == 201, queued.text
        job_id = queued.json()["id"]
        expected = settings.data_dir / "jobs" / f"job-{job_id}" / "tensorboard"
        assert queued.json()["tensorboard_dir"] == str(expected)

        claim = jobs.claim(settings.resolved_database_url, "test-holder")
        assert claim is not None and claim.job_id == job_id
        assert run_claimed_job(claim, settings) == jobs.SUCCEEDED  # the runner's own code path

        answer = client.get(f"/v1/jobs/{job_id}").json()
        listed = client.get("/v1/jobs").json()["jobs"]
    assert answer["state"] == "succeeded"
    assert answer["tensorboard_dir"] == str(expected)
    assert [job["tensorboard_dir"] for job in listed if job["id"] == job_id] == [str(expected)]
    scalars = read_scalars(expected)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [step for step, _ in scalars["validation/loss"]] == [0, 3]  # no eval_steps: first and last
