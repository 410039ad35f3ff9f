"""Walk-forwards (``walk_forwards``) in the work queue (``services.common.queue``).

The backtest service queues one per ``POST /v1/walk-forwards`` once its plan is checked
(``walk_forward_plan.prepare_walk_forward``); a pipeline worker (``hsig pipeline worker``,
``services.pipeline.walk_forward_worker``) claims it, runs ``run_walk_forward`` under a lease
it renews, writes its progress line here and its folds to the state file, and closes it.
Here because both sides (a service and the floor above it) move the same rows.

Cancel (``cancel``): a queued walk-forward is cancelled at once, with the training jobs an
earlier attempt of it left waiting in the trainer's queue; a running one becomes
``cancelling`` and its worker stops at the next fold boundary (``walk_forward_worker``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.models import TrainingJob, WalkForward, utcnow
from services.common.queue import UNFINISHED, WAITING, State, WorkQueue

WALK_FORWARDS: WorkQueue[WalkForward] = WorkQueue(
    WalkForward, noun="walk-forward", not_found="walk-forward {id} does not exist", param="id"
)


def submit(url: str, config: dict[str, Any], name: str, key: str | None) -> tuple[WalkForward, bool]:
    """Queue a walk-forward (once per idempotency key): (the item, whether the key had queued it)."""
    return WALK_FORWARDS.submit(url, config, key, name=name)


def unfinished_named(url: str, name: str) -> WalkForward | None:
    """The walk-forward of this name still waiting or running, if any (one state file, one runner)."""
    with session_scope(url) as session:
        query = select(WalkForward).where(WalkForward.name == name, WalkForward.state.in_(UNFINISHED))
        return session.scalars(query.limit(1)).first()


def job_key(name: str, fold: int, method: str) -> str:
    """The idempotency key of a walk-forward's training job: a rerun of the name finds the job."""
    return f"walk-forward:{name}:fold{fold}:{method}"


def cancel(url: str, item_id: int) -> WalkForward:
    """Cancel a walk-forward: queued -> cancelled at once (and its waiting training jobs);
    running -> cancelling (its worker stops at the next fold boundary; a second cancel answers
    the same); finished -> Conflict naming its state; unknown -> NotFound."""
    item = WALK_FORWARDS.cancel(url, item_id)
    if item.state == State.CANCELLED:
        cancel_waiting_jobs(url, item)
    return item


def cancel_waiting_jobs(url: str, item: WalkForward) -> list[int]:
    """Cancel the training jobs of this walk-forward's name still waiting in the trainer's queue
    (left by an attempt that was stopped or crashed); returns their ids.

    Their idempotency keys are released (kept in the error line): a later walk-forward of the
    same name, resuming, queues those jobs afresh instead of replaying a cancelled one as a
    failed fold. Running and finished jobs are left alone (a finished one is reused by a rerun)."""
    prefix = f"walk-forward:{item.name}:fold"
    now = utcnow()
    with session_scope(url) as session:
        jobs = session.scalars(
            select(TrainingJob)
            .where(TrainingJob.idempotency_key.startswith(prefix, autoescape=True))
            .where(TrainingJob.state.in_(WAITING))
            .with_for_update()
        ).all()
        for job in jobs:
            job.error = (
                f"cancelled before it started: walk-forward {item.id} ({item.name}) was cancelled; "
                f"key {job.idempotency_key} released"
            )
            job.state, job.finished_at, job.holder = State.CANCELLED.value, now, None
            job.idempotency_key = None
        return [job.id for job in jobs]
