"""The job queue in the ``training_jobs`` table: submit, claim, heartbeat, cancel, recover.

States: queued -> running -> succeeded | failed | cancelled, with ``cancelling`` while a
running job is asked to stop. A claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL:
several workers never take the same job and never wait on each other) followed by an UPDATE
that only succeeds while the job is still queued (SQLite ignores FOR UPDATE, so that
condition alone decides there). Every later write by a worker names its claim
(``worker_id``), so a worker that lost its job to stale-job recovery cannot overwrite it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from services.common.db import session_scope
from services.common.db.models import TrainingJob, utcnow
from services.common.errors import Conflict, NotFound
from services.common.idempotency import create_once

log = logging.getLogger(__name__)

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
ACTIVE = (RUNNING, CANCELLING)
FINAL = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class Claim:
    job_id: int
    worker_id: str
    attempt: int


def submit(database_url: str, config: dict[str, Any], adapter_name: str, total_steps: int) -> TrainingJob:
    return submit_once(database_url, config, adapter_name, total_steps, None)[0]


def submit_once(
    database_url: str, config: dict[str, Any], adapter_name: str, total_steps: int, key: str | None
) -> tuple[TrainingJob, bool]:
    """Queue a job, once per idempotency key: (the job, whether the key had queued it already)."""
    return create_once(
        database_url,
        TrainingJob,
        key,
        config,
        lambda: TrainingJob(state=QUEUED, config=config, adapter_name=adapter_name, total_steps=total_steps),
    )


def get_job(database_url: str, job_id: int) -> TrainingJob:
    with session_scope(database_url) as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            raise NotFound(f"no training job {job_id}", param="job_id")
        return job


def list_jobs(database_url: str, state: str | None = None, limit: int = 100) -> list[TrainingJob]:
    query = select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit)
    if state:
        query = query.where(TrainingJob.state == state)
    with session_scope(database_url) as session:
        return list(session.scalars(query))


def count_by_state(database_url: str) -> dict[str, int]:
    with session_scope(database_url) as session:
        rows = session.execute(select(TrainingJob.state, func.count()).group_by(TrainingJob.state))
        return {state: count for state, count in rows}


def claim(database_url: str, worker_id: str) -> Claim | None:
    """Take the oldest queued job, or None when there is none (or another worker won)."""
    with session_scope(database_url) as session:
        job_id = session.scalar(
            select(TrainingJob.id)
            .where(TrainingJob.state == QUEUED)
            .order_by(TrainingJob.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if job_id is None:
            return None
        now = utcnow()
        taken = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.state == QUEUED)
            .values(
                state=RUNNING,
                worker_id=worker_id,
                attempts=TrainingJob.attempts + 1,
                started_at=func.coalesce(TrainingJob.started_at, now),
                heartbeat_at=now,
                error=None,
            )
        )
        if taken.rowcount != 1:
            return None
        attempt = session.scalar(select(TrainingJob.attempts).where(TrainingJob.id == job_id))
    log.info("worker %s claimed job %d (attempt %d)", worker_id, job_id, attempt)
    return Claim(job_id, worker_id, int(attempt or 1))


def _owned(claim: Claim) -> Any:
    return (
        TrainingJob.id == claim.job_id,
        TrainingJob.worker_id == claim.worker_id,
        TrainingJob.state.in_(ACTIVE),
    )


def heartbeat(
    database_url: str,
    claim: Claim,
    step: int,
    total_steps: int,
    loss: float | None,
    eta_seconds: float | None,
    progress: bool = True,
) -> str | None:
    """Record that the job is alive (and, with ``progress``, how far it is); returns the job's
    state (``cancelling`` asks the runner to stop), or None when this worker lost the job."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress:
        values.update(step=step, total_steps=total_steps, loss=loss, eta_seconds=eta_seconds)
    with session_scope(database_url) as session:
        session.execute(update(TrainingJob).where(*_owned(claim)).values(**values))
        row = session.execute(
            select(TrainingJob.state, TrainingJob.worker_id).where(TrainingJob.id == claim.job_id)
        ).one()
    return row.state if row.worker_id == claim.worker_id and row.state in ACTIVE else None


def record_checkpoint(database_url: str, claim: Claim, path: str) -> None:
    with session_scope(database_url) as session:
        session.execute(
            update(TrainingJob).where(*_owned(claim)).values(checkpoint_path=path, heartbeat_at=utcnow())
        )


def finish(database_url: str, claim: Claim, metrics: dict[str, Any]) -> bool:
    return _close(database_url, claim, SUCCEEDED, metrics=metrics, error=None)


def fail(database_url: str, claim: Claim, error: str) -> bool:
    return _close(database_url, claim, FAILED, error=error)


def mark_cancelled(database_url: str, claim: Claim) -> bool:
    return _close(database_url, claim, CANCELLED, error="cancelled on request")


def _close(database_url: str, claim: Claim, state: str, **values: Any) -> bool:
    values = {key: value for key, value in values.items() if key != "metrics" or value is not None}
    with session_scope(database_url) as session:
        result = session.execute(
            update(TrainingJob)
            .where(*_owned(claim))
            .values(state=state, finished_at=utcnow(), heartbeat_at=utcnow(), eta_seconds=0.0, **values)
        )
        return result.rowcount == 1


def after_crash(database_url: str, claim: Claim, error: str, max_attempts: int) -> str | None:
    """The runner died without closing its job: requeue it (it resumes from its checkpoint),
    or fail it once it has used its attempts; a job being cancelled ends cancelled."""
    with session_scope(database_url) as session:
        job = session.scalar(select(TrainingJob).where(*_owned(claim)).with_for_update())
        if job is None:
            return None
        job.heartbeat_at = utcnow()
        if job.state == CANCELLING:
            job.state, job.finished_at, job.error = CANCELLED, utcnow(), "cancelled on request"
        elif job.attempts < max_attempts:
            job.state, job.worker_id, job.error = QUEUED, None, f"attempt {job.attempts}: {error}"
        else:
            job.state, job.finished_at, job.error = (
                FAILED,
                utcnow(),
                f"gave up after {job.attempts} attempts: {error}",
            )
        return job.state


def release(database_url: str, claim: Claim) -> None:
    """Give a job back untouched (the service is stopping): queued again, the attempt not counted."""
    with session_scope(database_url) as session:
        session.execute(
            update(TrainingJob)
            .where(*_owned(claim), TrainingJob.state == RUNNING)
            .values(state=QUEUED, worker_id=None, attempts=TrainingJob.attempts - 1)
        )


def cancel(database_url: str, job_id: int) -> TrainingJob:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    with session_scope(database_url) as session:
        job = session.scalar(select(TrainingJob).where(TrainingJob.id == job_id).with_for_update())
        if job is None:
            raise NotFound(f"no training job {job_id}", param="job_id")
        if job.state in FINAL:
            raise Conflict(f"job {job_id} has already {job.state}", param="job_id")
        if job.state == QUEUED:
            job.state, job.finished_at, job.error = CANCELLED, utcnow(), "cancelled before it started"
        else:
            job.state = CANCELLING
        session.flush()
        return job


def recover_stale(database_url: str, lease_seconds: float, max_attempts: int) -> list[int]:
    """Jobs whose worker stopped beating (a killed process, a lost machine) go back to the
    queue, or fail once their attempts are spent. Returns the ids it touched."""
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    touched = []
    with session_scope(database_url) as session:
        stale = session.scalars(
            select(TrainingJob)
            .where(TrainingJob.state.in_(ACTIVE), TrainingJob.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        ).all()
        for job in stale:
            touched.append(job.id)
            note = f"worker {job.worker_id} stopped reporting"
            if job.state == CANCELLING:
                job.state, job.finished_at, job.error = CANCELLED, utcnow(), "cancelled on request"
            elif job.attempts < max_attempts:
                job.state, job.worker_id, job.error = QUEUED, None, note
            else:
                job.state, job.finished_at, job.error = (
                    FAILED,
                    utcnow(),
                    f"{note}; gave up after {job.attempts} attempts",
                )
    for job_id in touched:
        log.warning("recovered stale training job %d", job_id)
    return touched
