"""The trainer's HTTP routes on port 8002: a thin router over ``jobs`` and ``training.prepare``."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from services.common import idempotency
from services.common.auth import Authorized
from services.common.db.models import TrainingJob
from services.common.http import RowId
from services.common.idempotency import IdempotencyKey
from services.trainer import jobs
from services.trainer.config import TrainConfig
from services.trainer.events import tensorboard_dir_for
from services.trainer.job_process import checkpoint_dir_for
from services.trainer.schemas import JobList, JobOut
from services.trainer.settings import TrainerSettings
from services.trainer.training import prepare

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["jobs"])


def _settings(request: Request) -> TrainerSettings:
    return request.app.state.settings


def _out(settings: TrainerSettings, job: TrainingJob) -> JobOut:
    """The job as answered, with the directory its runner writes TensorBoard events to (named
    after the runner's checkpoint directory, as training.train names it)."""
    run = checkpoint_dir_for(settings, job.id).name
    return JobOut.of(job, str(tensorboard_dir_for(settings, run)))


@router.post("/jobs", status_code=201, dependencies=[Authorized])
async def submit_job(
    config: TrainConfig, request: Request, response: Response, idempotency_key: IdempotencyKey = None
) -> JobOut:
    """Validate the job (base model, rank, windows, classes, corpus) and queue it. With an
    ``Idempotency-Key`` a repeat returns the job the key queued, and queues nothing."""
    settings = _settings(request)
    key = idempotency.checked(idempotency_key)
    body = config.model_dump(mode="json")
    if key is not None and (known := await asyncio.to_thread(_replay, settings, key, body)) is not None:
        response.headers[idempotency.REPLAYED_HEADER] = "true"
        return known
    prepared = await asyncio.to_thread(prepare, config, settings)  # raises InvalidInput -> 400
    job, replayed = await asyncio.to_thread(
        jobs.submit_once, settings.resolved_database_url, body, config.name, prepared.total_steps, key
    )
    if replayed:  # a concurrent request with the same key queued it first
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return _out(settings, job)


def _replay(settings: TrainerSettings, key: str, body: dict) -> JobOut | None:
    """The job an earlier request with this key queued, before the costly checks run again."""
    job = idempotency.replay(settings.resolved_database_url, TrainingJob, key, body)
    return None if job is None else _out(settings, job)


@router.get("/jobs")
async def list_jobs(
    request: Request,
    state: Annotated[str | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    settings = _settings(request)
    found = await asyncio.to_thread(jobs.list_jobs, settings.resolved_database_url, state, limit)
    return JobList(jobs=[_out(settings, job) for job in found])


@router.get("/jobs/{job_id}")
async def get_job(job_id: RowId, request: Request) -> JobOut:
    settings = _settings(request)
    return _out(settings, await asyncio.to_thread(jobs.get_job, settings.resolved_database_url, job_id))


@router.post("/jobs/{job_id}/cancel", dependencies=[Authorized])
async def cancel_job(job_id: RowId, request: Request) -> JobOut:
    """Queued: cancelled at once. Running: stops after its current step (state cancelling)."""
    settings = _settings(request)
    return _out(settings, await asyncio.to_thread(jobs.cancel, settings.resolved_database_url, job_id))
