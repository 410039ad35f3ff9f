"""The job queue on SQLite and PostgreSQL: claims are exclusive, cancels and crashes settle."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from services.common.db import session_scope
from services.common.db.models import TrainingJob, utcnow
from services.common.errors import Conflict, NotFound
from services.trainer import jobs


def queue(db_url: str, count: int) -> list[int]:
    return [jobs.submit(db_url, {"name": f"job-{i}"}, f"job-{i}", 10).id for i in range(count)]


def test_claims_take_the_oldest_job_once(db_url: str) -> None:
    first, second = queue(db_url, 2)
    claim = jobs.claim(db_url, "worker-a")
    assert claim is not None and claim.job_id == first and claim.attempt == 1
    assert jobs.claim(db_url, "worker-b").job_id == second
    assert jobs.claim(db_url, "worker-c") is None
    job = jobs.get_job(db_url, first)
    assert job.state == "running" and job.holder == "worker-a" and job.started_at is not None


def test_concurrent_workers_never_share_a_job(db_url: str) -> None:
    ids = queue(db_url, 12)
    taken: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (claim := jobs.claim(db_url, name)) is not None:
            with lock:
                taken.append(claim.job_id)

    workers = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(taken) == ids  # every job once, none twice


def test_heartbeat_reports_progress_and_a_cancel_request(db_url: str) -> None:
    (job_id,) = queue(db_url, 1)
    claim = jobs.claim(db_url, "w")
    assert jobs.heartbeat(db_url, claim, 4, 10, 1.5, 12.0) == "running"
    job = jobs.get_job(db_url, job_id)
    assert (job.step, job.total_steps, job.loss, job.eta_seconds) == (4, 10, 1.5, 12.0)
    assert jobs.cancel(db_url, job_id).state == "cancelling"
    assert jobs.heartbeat(db_url, claim, 5, 10, 1.4, 10.0) == "cancelling"
    assert jobs.mark_cancelled(db_url, claim)
    assert jobs.get_job(db_url, job_id).state == "cancelled"
    with pytest.raises(Conflict):
        jobs.cancel(db_url, job_id)


def test_a_queued_job_cancels_at_once_and_unknown_ids_are_not_found(db_url: str) -> None:
    (job_id,) = queue(db_url, 1)
    assert jobs.cancel(db_url, job_id).state == "cancelled"
    assert jobs.claim(db_url, "w") is None
    with pytest.raises(NotFound):
        jobs.cancel(db_url, job_id + 100)
    with pytest.raises(NotFound):
        jobs.get_job(db_url, job_id + 100)


def test_stale_jobs_are_requeued_then_failed_after_their_attempts(db_url: str) -> None:
    (job_id,) = queue(db_url, 1)
    for attempt in (1, 2):
        claim = jobs.claim(db_url, f"w{attempt}")
        assert claim.attempt == attempt
        with session_scope(db_url) as session:  # the worker died a while ago
            session.execute(update(TrainingJob).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
        assert jobs.recover_stale(db_url, lease_seconds=60, max_attempts=2) == [job_id]
    job = jobs.get_job(db_url, job_id)
    assert job.state == "failed" and "gave up after 2 attempts" in job.error
    # a worker that lost its job cannot close it any more
    assert not jobs.finish(db_url, claim, {"adapter": "x"})
    assert jobs.heartbeat(db_url, claim, 9, 10, 0.1, 1.0) is None


def test_a_fresh_heartbeat_is_not_stale(db_url: str) -> None:
    queue(db_url, 1)
    jobs.claim(db_url, "w")
    assert jobs.recover_stale(db_url, lease_seconds=60, max_attempts=3) == []


def test_after_a_crash_the_job_is_requeued_with_its_checkpoint(db_url: str) -> None:
    (job_id,) = queue(db_url, 1)
    claim = jobs.claim(db_url, "w")
    jobs.record_checkpoint(db_url, claim, "/tmp/ck/job-1")
    assert jobs.after_crash(db_url, claim, "runner exited with code -9", max_attempts=3) == "queued"
    job = jobs.get_job(db_url, job_id)
    assert job.checkpoint_path == "/tmp/ck/job-1" and "code -9" in job.error and job.holder is None
    assert jobs.claim(db_url, "w2").attempt == 2
