"""Training jobs in the work queue (``services.common.queue``): what the trainer adds to it.

The queue itself (states, claims with a lease, heartbeats, attempts, cancel, release, expiry)
is shared with backtest runs; this module fixes the trainer's policy: a crashed runner's job
goes back to ``queued`` at once (the next attempt resumes from its checkpoint) until
``max_attempts``; heartbeats carry the job's progress; a finished job's ETA is zero.
"""

from __future__ import annotations

from typing import Any

from services.common.db.models import TrainingJob
from services.common.queue import ACTIVE, FINAL, Claim, State, WorkQueue

__all__ = ["ACTIVE", "FINAL", "QUEUE", "Claim", "State"]

QUEUE: WorkQueue[TrainingJob] = WorkQueue(
    TrainingJob, noun="job", not_found="no training job {id}", param="job_id"
)

QUEUED, RUNNING, CANCELLING = State.QUEUED, State.RUNNING, State.CANCELLING
SUCCEEDED, FAILED, CANCELLED = State.SUCCEEDED, State.FAILED, State.CANCELLED


def submit(database_url: str, config: dict[str, Any], adapter_name: str, total_steps: int) -> TrainingJob:
    return submit_once(database_url, config, adapter_name, total_steps, None)[0]


def submit_once(
    database_url: str, config: dict[str, Any], adapter_name: str, total_steps: int, key: str | None
) -> tuple[TrainingJob, bool]:
    """Queue a job, once per idempotency key: (the job, whether the key had queued it already)."""
    return QUEUE.submit(database_url, config, key, adapter_name=adapter_name, total_steps=total_steps)


def get_job(database_url: str, job_id: int) -> TrainingJob:
    return QUEUE.get(database_url, job_id)


def list_jobs(database_url: str, state: str | None = None, limit: int = 100) -> list[TrainingJob]:
    return QUEUE.list(database_url, state, limit)


def count_by_state(database_url: str) -> dict[str, int]:
    return QUEUE.count_by_state(database_url)


def claim(database_url: str, holder: str) -> Claim | None:
    """Take the oldest queued job, or None when there is none (or another worker won)."""
    return QUEUE.claim(database_url, holder)


def heartbeat(
    database_url: str,
    claim: Claim,
    step: int,
    total_steps: int,
    loss: float | None,
    eta_seconds: float | None,
    progress: bool = True,
) -> str | None:
    """Renew the lease (and, with ``progress``, record how far the job is); returns the job's
    state (``cancelling`` asks the runner to stop), or None when this worker lost the job."""
    values = dict(step=step, total_steps=total_steps, loss=loss, eta_seconds=eta_seconds) if progress else {}
    beat = QUEUE.heartbeat(database_url, claim, **values)
    return beat.state if beat.held else None


def record_checkpoint(database_url: str, claim: Claim, path: str) -> None:
    QUEUE.update(database_url, claim, checkpoint_path=path)


def finish(database_url: str, claim: Claim, metrics: dict[str, Any]) -> bool:
    return QUEUE.succeed(database_url, claim, metrics=metrics, eta_seconds=0.0)


def fail(database_url: str, claim: Claim, error: str) -> bool:
    """The job itself is bad (its config, its data): failed for good, not retried."""
    return QUEUE.close(database_url, claim, State.FAILED, error=error, eta_seconds=0.0)


def mark_cancelled(database_url: str, claim: Claim) -> bool:
    return QUEUE.cancelled(database_url, claim, eta_seconds=0.0)


def after_crash(database_url: str, claim: Claim, error: str, max_attempts: int) -> str | None:
    """The runner died without closing its job: requeue it at once (it resumes from its
    checkpoint), or fail it once it has used its attempts; a job being cancelled ends cancelled."""
    return QUEUE.fail(database_url, claim, error, max_attempts=max_attempts)


def release(database_url: str, claim: Claim) -> None:
    """Give a job back untouched (the service is stopping): queued again, the attempt not counted."""
    QUEUE.release(database_url, claim)


def cancel(database_url: str, job_id: int) -> TrainingJob:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    return QUEUE.cancel(database_url, job_id)


def recover_stale(database_url: str, lease_seconds: float, max_attempts: int) -> list[int]:
    """Jobs whose worker stopped beating (a killed process, a lost machine) go back to the
    queue, or fail once their attempts are spent. Returns the ids it touched."""
    return QUEUE.expire(database_url, lease_seconds, max_attempts)
