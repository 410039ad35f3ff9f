"""POST /v1/walk-forwards/{id}/cancel on the real backtest app (PostgreSQL), with the
pipeline's real walk-forward worker: a queued walk-forward is cancelled at once with the
training jobs a stopped attempt left waiting; a running one is ``cancelling`` until its worker
has finished the fold in progress, then ``cancelled`` before the next fold, and a rerun of the
name resumes there; a finished one is a 409 naming its state, an unknown id a 404."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.backtest.settings import BacktestSettings
from services.common.walk_forward_plan import state_path
from services.common.walk_forward_queue import job_key
from tests.backtest.conftest import WALK_FORWARD_PLAN
from tests.conftest import POSTGRES_ONLY
from tests.pipeline.conftest import stored_jobs
from tests.support.waits import wait_for

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer test-token"}
NAME = "wf-cancel"
GOOD = {"name": NAME, **WALK_FORWARD_PLAN}
# A trainer service's worker trains the folds: the walk-forward waits for each job, which lets
# a test hold a fold open (nobody runs its job) and cancel while it is in progress.
QUEUED_JOBS = {**GOOD, "run_jobs": "queue"}
# Each case starts a real worker and trains a fold, so this file runs on PostgreSQL, the
# deployed database, only (the suite's time; SQLite took 126 s of it): the queue's cancel
# states themselves are checked on both dialects in tests/common/test_queue.py.
pytestmark = POSTGRES_ONLY


@pytest.fixture
def wf_env() -> dict[str, str]:
    return {"HSIG_WORKER_POLL_SECONDS": "0.2"}  # how often a walk-forward looks at its job


def _cancel(client: TestClient, item_id: int) -> Any:
    return client.post(f"/v1/walk-forwards/{item_id}/cancel", headers=AUTH)


def _job(url: str, key: str) -> Any:
    return next((job for job in stored_jobs(url) if job.idempotency_key == key), None)


def _run_trainer_job(settings: BacktestSettings, job_id: int) -> None:
    """What a trainer service's worker does with a queued job: claim it and run it."""
    from services.common.queue import new_holder
    from services.pipeline.reproduce import _as
    from services.trainer import jobs
    from services.trainer.job_process import run_claimed_job
    from services.trainer.settings import TrainerSettings

    trainer = _as(TrainerSettings, settings).model_copy(update={"inference_url": ""})
    claim = jobs.QUEUE.claim(settings.resolved_database_url, new_holder("trainer"), job_id)
    assert claim is not None
    run_claimed_job(claim, trainer)
    assert jobs.get_job(settings.resolved_database_url, job_id).state == "succeeded"


def test_unknown_ids_are_a_404_and_cancel_needs_the_token(wf_client: TestClient) -> None:
    answer = _cancel(wf_client, 999_999)
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "walk-forward 999999 does not exist"
    queued = wf_client.post("/v1/walk-forwards", json=GOOD, headers=AUTH).json()
    assert wf_client.post(f"/v1/walk-forwards/{queued['id']}/cancel").status_code == 401
    assert wf_client.get(f"/v1/walk-forwards/{queued['id']}").json()["state"] == "queued"


def test_a_queued_walk_forward_is_cancelled_at_once_with_the_jobs_its_stopped_attempt_left(
    wf_client: TestClient, wf_settings: BacktestSettings
) -> None:
    from services.pipeline.walk_forward_worker import run_worker

    url = wf_settings.resolved_database_url
    queued = wf_client.post("/v1/walk-forwards", json=QUEUED_JOBS, headers=AUTH).json()
    # A real worker process queues fold 1's job for the trainer, then is stopped (SIGTERM, as
    # compose stops it): the walk-forward goes back to the queue, its job stays waiting.
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.pipeline.cli", "pipeline", "worker", "--poll-seconds", "0.1"],
        cwd=ROOT,
        env=dict(os.environ),
    )
    try:
        first = wait_for(lambda: _job(url, job_key(NAME, 1, "lora")), seconds=180, what="fold 1's job")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    assert wf_client.get(f"/v1/walk-forwards/{queued['id']}").json()["state"] == "queued"
    assert first.state == "queued"
    # Another walk-forward's waiting job is not this one's to cancel.
    from services.trainer import jobs

    other, _ = jobs.QUEUE.submit(url, first.config, job_key("wf-other", 1, "lora"), adapter_name="x")

    answer = _cancel(wf_client, queued["id"])
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
    assert cancelled["error"] == "cancelled before it started"
    assert wf_client.get(f"/v1/walk-forwards/{queued['id']}").json()["state"] == "cancelled"
    job = jobs.get_job(url, first.id)
    assert job.state == "cancelled" and job.finished_at is not None
    assert job.idempotency_key is None  # released: a rerun of the name trains it afresh
    assert f"walk-forward {queued['id']} ({NAME}) was cancelled" in job.error
    assert job_key(NAME, 1, "lora") in job.error
    assert jobs.get_job(url, other.id).state == "queued"

    again = _cancel(wf_client, queued["id"])  # already cancelled: a 409 that names the state
    assert again.status_code == 409
    assert again.json()["error"]["message"] == f"walk-forward {queued['id']} has already cancelled"
    assert run_worker(wf_settings, once=True) == 0  # nothing left to claim
    assert jobs.get_job(url, first.id).state == "cancelled"

    rerun = wf_client.post("/v1/walk-forwards", json=GOOD, headers=AUTH)  # the name may run again
    assert rerun.status_code == 202
    assert run_worker(wf_settings, once=True) == 1
    done = wf_client.get(f"/v1/walk-forwards/{rerun.json()['id']}").json()
    assert done["state"] == "succeeded", done
    assert [fold["versions"]["lora"]["state"] for fold in done["folds"]] == ["succeeded", "succeeded"]
    assert done["folds"][0]["versions"]["lora"]["job_id"] != first.id  # not the cancelled job
    finished = _cancel(wf_client, rerun.json()["id"])
    assert finished.status_code == 409
    assert finished.json()["error"]["message"] == f"walk-forward {rerun.json()['id']} has already succeeded"


def test_a_running_walk_forward_finishes_its_fold_and_stops_before_the_next(
    wf_client: TestClient, wf_settings: BacktestSettings
) -> None:
    from services.pipeline.walk_forward_worker import run_worker
    from services.trainer import jobs

    url = wf_settings.resolved_database_url
    item_id = wf_client.post("/v1/walk-forwards", json=QUEUED_JOBS, headers=AUTH).json()["id"]
    stop = threading.Event()
    ran: list[int] = []
    worker = threading.Thread(
        target=lambda: ran.append(run_worker(wf_settings, poll_seconds=0.1, stop=stop)), daemon=True
    )
    worker.start()
    try:
        job = wait_for(lambda: _job(url, job_key(NAME, 1, "lora")), seconds=120, what="fold 1's job")
        running = wf_client.get(f"/v1/walk-forwards/{item_id}").json()
        assert running["state"] == "running" and "fold 1/2" in running["progress"]

        first = _cancel(wf_client, item_id)
        assert first.status_code == 200, first.text
        assert first.json()["state"] == "cancelling" and first.json()["finished_at"] is None
        again = _cancel(wf_client, item_id)  # idempotent: the same state, nothing else changes
        assert again.status_code == 200 and again.json()["state"] == "cancelling"
        assert wf_client.get(f"/v1/walk-forwards/{item_id}").json()["state"] == "cancelling"
        assert _job(url, job_key(NAME, 1, "lora")).state == "queued"  # the fold in progress goes on

        _run_trainer_job(wf_settings, job.id)  # the fold's training ends; the worker scores the fold
        wait_for(
            lambda: wf_client.get(f"/v1/walk-forwards/{item_id}").json()["state"] == "cancelled",
            seconds=180,
            what="the worker to stop at the fold boundary",
        )
    finally:  # a worker that went on to fold 2 would wait for its job for hours: end that wait
        for waiting in stored_jobs(url):
            if waiting.state == "queued":
                jobs.cancel(url, waiting.id)
        stop.set()
        worker.join(timeout=120)
    assert ran == [1]

    item = wf_client.get(f"/v1/walk-forwards/{item_id}").json()
    assert item["finished_at"] is not None and item["attempts"] == 1
    assert item["error"] == "cancelled on request, stopped before fold 2 of 2"
    assert item["progress"] == item["error"]
    assert [fold["state"] for fold in item["folds"]] == ["succeeded", "pending"]
    assert item["folds"][0]["backtest"]["run_id"] is not None  # fold 1 finished whole
    assert item["folds"][1]["versions"] == {} and item["folds"][1]["backtest"] is None
    assert item["pooled"] is None
    assert [job.idempotency_key for job in stored_jobs(url)] == [job_key(NAME, 1, "lora")]
    on_disk = state_path(wf_settings.reports_path, NAME).read_text()
    assert '"pooled": null' in on_disk

    finished = _cancel(wf_client, item_id)
    assert finished.status_code == 409
    assert finished.json()["error"]["message"] == f"walk-forward {item_id} has already cancelled"

    rerun = wf_client.post("/v1/walk-forwards", json=GOOD, headers=AUTH)  # resumes at fold 2
    assert rerun.status_code == 202
    assert run_worker(wf_settings, once=True) == 1
    done = wf_client.get(f"/v1/walk-forwards/{rerun.json()['id']}").json()
    assert done["state"] == "succeeded" and done["pooled"]["folds_covered"] == [1, 2]
    assert done["folds"][0]["versions"]["lora"]["job_id"] == job.id  # fold 1 was not trained again
    assert len(stored_jobs(url)) == 2
