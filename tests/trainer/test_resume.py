"""A job killed with SIGKILL part-way resumes from its checkpoint and finishes, with the same
weights an uninterrupted run produces. Real runner processes, real queue, on PostgreSQL (the
deployed database; each case trains 600 steps in three processes, 42 s of the suite a dialect:
the queue's claims, heartbeats and requeues are tested on both dialects in test_jobs.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from services.common.settings import get_settings
from services.trainer import jobs
from services.trainer.job_process import checkpoint_dir_for
from services.trainer.settings import TrainerSettings
from services.trainer.training import train
from services.trainer.worker import run_one, runner_command
from tests.conftest import POSTGRES_ONLY
from tests.support.waits import wait_for
from tests.trainer.conftest import lora_config

pytestmark = [pytest.mark.slow, POSTGRES_ONLY]
STEPS, EVERY = 300, 20


def test_a_killed_job_resumes_from_its_checkpoint(
    trainer_settings: TrainerSettings,
    planted_file: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HSIG_HEARTBEAT_SECONDS", "0.1")
    get_settings.cache_clear()
    settings = get_settings(TrainerSettings)
    url = settings.resolved_database_url
    config = lora_config(
        planted_file,
        tiny_model_dir,
        name="resumed",
        optim={"max_steps": STEPS, "batch_size": 8, "learning_rate": 5e-3, "checkpoint_every": EVERY},
        evaluate_accuracy=False,
    )
    job = jobs.submit(url, config.model_dump(mode="json"), config.name, STEPS)
    claim = jobs.claim(url, "doomed-worker")
    # The worker's own command line, at a lower priority so that on a busy machine this test
    # still sees the job part-way (the kill must land between the second checkpoint and the end).
    child = subprocess.Popen(runner_command(claim), preexec_fn=lambda: os.nice(10))
    try:
        wait_for(lambda: jobs.get_job(url, job.id).step >= 2 * EVERY + 5, seconds=180, what="two checkpoints")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    killed = jobs.get_job(url, job.id)
    assert child.returncode == -signal.SIGKILL
    assert killed.state == "running" and killed.step < STEPS  # killed part-way, nothing settled it
    assert killed.checkpoint_path == str(checkpoint_dir_for(settings, job.id))
    assert not (settings.adapters_path / "resumed").exists()  # nothing half-published

    # The service that ran it is gone too: its heartbeat goes stale and the job is requeued.
    assert jobs.recover_stale(url, lease_seconds=0, max_attempts=3) == [job.id]
    assert run_one(settings) == job.id  # a new worker claims it and runs it in a new process
    done = jobs.get_job(url, job.id)
    assert done.state == "succeeded", done.error
    assert done.attempts == 2 and done.step == STEPS
    resumed_from = done.metrics["resumed_from_step"]
    assert resumed_from >= 2 * EVERY and resumed_from % EVERY == 0 and resumed_from <= killed.step
    assert not checkpoint_dir_for(settings, job.id).exists()  # cleaned up once published

    # Resuming changed nothing: an uninterrupted run of the same job gives the same weights.
    reference = train(config.model_copy(update={"name": "uninterrupted"}), settings)
    resumed = load_file(Path(done.metrics["path"]) / "adapter_model.safetensors")
    straight = load_file(reference.path / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for name in resumed:
        assert (resumed[name] - straight[name]).abs().max() <= 1e-6, name
