"""Migration 0004 (one work queue) keeps every stored job and run, on SQLite and PostgreSQL:
rows written by the 0003 schema are read, claimed and settled by the new code; the downgrade
gives the trainer its ``worker_id`` back."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from services.backtest import store
from services.common.db import get_engine
from services.common.db.migrate import alembic_config, upgrade
from services.trainer import jobs
from tests.conftest import stored_at

JOB = (
    "INSERT INTO training_jobs (state, config, adapter_name, step, total_steps, error, worker_id,"
    " attempts, checkpoint_path, metrics, created_at, started_at, heartbeat_at)"
    " VALUES (:state, '{}', 'a', :step, 10, NULL, :worker, :attempts, :checkpoint, '{}',"
    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :beat)"
)
RUN = (
    'INSERT INTO backtest_runs (state, "trigger", config, attempts, error, summary, created_at,'
    " finished_at, holder, heartbeat_at) VALUES (:state, 'api', '{}', :attempts, :error, '{}',"
    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :holder, NULL)"
)


def _columns(db_url: str, table: str) -> set[str]:
    return {column["name"] for column in inspect(get_engine(db_url)).get_columns(table)}


def test_jobs_and_runs_stored_before_0004_keep_working(db_url: str) -> None:
    with stored_at(db_url, "0003") as connection:
        assert "worker_id" in _columns(db_url, "training_jobs")
        old_beat = "2020-01-01 00:00:00"
        for state, worker, attempts, beat in [
            ("running", "host:1:abc", 1, old_beat),  # its worker died long ago
            ("succeeded", "host:2:def", 1, old_beat),
            ("queued", None, 0, None),
        ]:
            connection.execute(
                text(JOB),
                {
                    "state": state,
                    "step": 3,
                    "worker": worker,
                    "attempts": attempts,
                    "checkpoint": "/ck",
                    "beat": beat,
                },
            )
        for state, attempts, error, holder in [
            ("retrying", 1, "inference timed out", None),
            ("running", 1, None, None),  # left running by a version before heartbeats
            ("failed", 3, "no rows", None),
        ]:
            connection.execute(
                text(RUN), {"state": state, "attempts": attempts, "error": error, "holder": holder}
            )

    assert {"holder", "available_at"} <= _columns(db_url, "training_jobs")
    assert "worker_id" not in _columns(db_url, "training_jobs")
    running, done, queued = sorted(jobs.list_jobs(db_url), key=lambda job: job.id)
    assert (running.state, running.holder, running.step, running.checkpoint_path) == (
        "running", "host:1:abc", 3, "/ck"
    )  # fmt: skip
    assert (done.state, done.holder, queued.state, queued.available_at) == (
        "succeeded",
        "host:2:def",
        "queued",
        None,
    )
    assert jobs.count_by_state(db_url) == {"running": 1, "succeeded": 1, "queued": 1}
    assert jobs.recover_stale(db_url, lease_seconds=60, max_attempts=3) == [running.id]
    assert jobs.claim(db_url, "new").job_id == running.id  # the oldest queued again
    assert jobs.claim(db_url, "new2").job_id == queued.id

    retrying, crashed, failed = store.list_runs(db_url)[::-1]
    assert (retrying.state, retrying.error, retrying.available_at) == (
        "retrying",
        "inference timed out",
        None,
    )
    assert store.claim_attempt(db_url, retrying.id, "r", stale_before=retrying.created_at) == 2  # due at once
    assert store.claim_attempt(db_url, crashed.id, "r", stale_before=crashed.created_at) == 2  # no heartbeat
    assert store.claim_attempt(db_url, failed.id, "r", stale_before=failed.created_at) is None
    assert store.get_run(db_url, failed.id).error == "no rows"


def test_the_downgrade_gives_worker_id_back(db_url: str) -> None:
    jobs.submit(db_url, {}, "a", 1)
    jobs.claim(db_url, "w")
    try:
        command.downgrade(alembic_config(db_url), "0003")
        assert "available_at" not in _columns(db_url, "backtest_runs")
        with get_engine(db_url).connect() as connection:
            assert connection.execute(text("SELECT worker_id, state FROM training_jobs")).one() == (
                "w",
                "running",
            )
    finally:
        upgrade(db_url)
    assert jobs.list_jobs(db_url)[0].holder == "w"
