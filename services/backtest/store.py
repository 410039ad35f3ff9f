"""Backtest runs (``backtest_runs``) in the work queue (``services.common.queue``).

A run moves queued -> running -> succeeded | retrying | failed. Every state change is one
short transaction, so a crash leaves a run in the state it had reached. Several scheduler
replicas may share the database: an attempt starts only through a claim (one conditional
UPDATE, after ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL), so exactly one replica runs
each attempt; its ``holder`` renews the lease (``heartbeat``), and a run whose lease expired
(its replica died) is claimable again. Every write of an attempt's outcome names its claim.
The retry policy (which failures, how long to wait) is the scheduler's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.common.db.models import BacktestRun, utcnow
from services.common.queue import ACTIVE, FINAL, WAITING, Claim, State, WorkQueue

__all__ = ["ACTIVE", "FINAL", "RUNS", "WAITING", "Claim", "State"]

RUNS: WorkQueue[BacktestRun] = WorkQueue(
    BacktestRun, noun="backtest run", not_found="backtest run {id} does not exist", param="id"
)


def create_run(
    url: str, config: dict[str, Any], trigger: str, state: str = "queued", idempotency_key: str | None = None
) -> tuple[int, bool]:
    """(run id, whether the idempotency key had created it already)."""
    run, replayed = RUNS.submit(url, config, idempotency_key, state=state, trigger=trigger)
    return run.id, replayed


def claim_attempt(url: str, run_id: int, holder: str, stale_before: datetime) -> int | None:
    """Start the run's next attempt for ``holder`` if nobody else runs it; the attempt number,
    or None when another replica has it (or it has finished, or waits for its retry time).

    Claimable: a queued run, a retrying one whose time has come, or a running one whose
    heartbeat is older than ``stale_before`` (its replica died) or absent (left running by a
    version before heartbeats): ``WorkQueue.claim`` with the lease that ``stale_before`` implies.
    """
    lease_seconds = max((utcnow() - stale_before).total_seconds(), 0.0)
    claim = RUNS.claim(url, holder, run_id, lease_seconds=lease_seconds)
    return None if claim is None else claim.attempt


def claim_of(url: str, run_id: int) -> Claim | None:
    """The claim the run is held under now (holder and attempt), or None if nobody runs it:
    for code that is handed a run its caller has claimed (``runner.run_backtest``)."""
    run = RUNS.get(url, run_id)
    if run.state not in ACTIVE or run.holder is None:
        return None
    return Claim(run.id, run.holder, run.attempts)


def heartbeat(url: str, run_id: int, holder: str) -> bool:
    """Renew ``holder``'s lease on a running run; False when it no longer holds it."""
    return RUNS.heartbeat(url, Claim(run_id, holder)).held


def mark_succeeded(
    url: str, run: int | Claim, json_path: str, html_path: str, summary: dict[str, Any]
) -> bool:
    """Record the report of the attempt ``run`` names (a claim, or a run id: whoever holds the
    run now); False, and nothing written, when that holder has lost the run."""
    claim = run if isinstance(run, Claim) else claim_of(url, run)
    if claim is None:
        return False
    return RUNS.succeed(url, claim, json_path=json_path, html_path=html_path, summary=summary)


def get_run(url: str, run_id: int) -> BacktestRun:
    return RUNS.get(url, run_id)


def list_runs(url: str, state: str | None = None, limit: int = 100) -> list[BacktestRun]:
    return RUNS.list(url, state, limit)


def unfinished_runs(url: str) -> list[BacktestRun]:
    """Runs that were queued, running or waiting for a retry when the service last stopped."""
    return RUNS.unfinished(url)


def last_succeeded(url: str) -> BacktestRun | None:
    runs = list_runs(url, state=State.SUCCEEDED, limit=1)
    return runs[0] if runs else None
