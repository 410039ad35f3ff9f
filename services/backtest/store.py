"""Backtest runs in the database (``backtest_runs``): queued -> running -> succeeded | retrying | failed.

Every state change is one short transaction, so a crash leaves a run in the state it had
reached. Several scheduler replicas may share the database: an attempt starts only through
``claim_attempt``, one conditional UPDATE, so exactly one replica runs each attempt. The
replica running it renews ``heartbeat_at`` (``heartbeat``); a "running" run whose heartbeat
lapsed (its process died) is claimable again, and ``orphaned_runs`` finds such runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from services.common.db import session_scope
from services.common.db.models import BacktestRun, utcnow
from services.common.errors import NotFound
from services.common.idempotency import create_once

TERMINAL = ("succeeded", "failed")
WAITING = ("queued", "retrying")


def create_run(
    url: str, config: dict[str, Any], trigger: str, state: str = "queued", idempotency_key: str | None = None
) -> tuple[int, bool]:
    """(run id, whether the idempotency key had created it already)."""
    run, replayed = create_once(
        url,
        BacktestRun,
        idempotency_key,
        config,
        lambda: BacktestRun(state=state, trigger=trigger, config=config, attempts=0),
    )
    return run.id, replayed


def start_attempt(url: str, run_id: int) -> int:
    """Mark the run running and count the attempt, whatever its state; returns the attempt
    number. For a run this process has just created (``run_backtest`` without a scheduler);
    a scheduler uses ``claim_attempt``."""
    with session_scope(url) as session:
        run = _get(session, run_id)
        run.state, run.attempts, run.started_at, run.error = "running", run.attempts + 1, utcnow(), None
        return run.attempts


def claim_attempt(url: str, run_id: int, holder: str, stale_before: datetime) -> int | None:
    """Start the run's next attempt for ``holder`` if nobody else runs it; the attempt number,
    or None when another replica has it (or it has finished).

    Claimable: a queued or retrying run; a running one whose heartbeat is older than
    ``stale_before`` (its replica died) or absent (left running by ``run_backtest`` without a
    scheduler, e.g. the CLI, or by a version before heartbeats). One UPDATE with that condition:
    of replicas racing for a run, the first to write changes what the others' condition sees.
    """
    now = utcnow()
    with session_scope(url) as session:
        result = session.execute(
            update(BacktestRun)
            .where(
                BacktestRun.id == run_id,
                or_(
                    BacktestRun.state.in_(WAITING),
                    and_(
                        BacktestRun.state == "running",
                        or_(BacktestRun.heartbeat_at.is_(None), BacktestRun.heartbeat_at < stale_before),
                    ),
                ),
            )
            .values(
                state="running",
                attempts=BacktestRun.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                holder=holder,
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            _get(session, run_id)  # NotFound for a run that does not exist
            return None
        return session.scalar(select(BacktestRun.attempts).where(BacktestRun.id == run_id))


def heartbeat(url: str, run_id: int, holder: str) -> bool:
    """Renew ``holder``'s claim on a running run; False when it no longer holds it."""
    with session_scope(url) as session:
        result = session.execute(
            update(BacktestRun)
            .where(BacktestRun.id == run_id, BacktestRun.holder == holder, BacktestRun.state == "running")
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]


def orphaned_runs(url: str, lease_seconds: float, retry_delay_seconds: float) -> list[BacktestRun]:
    """Unfinished runs nobody seems to be moving: running with a heartbeat older than the lease,
    queued for longer than the lease, or retrying a lease past their retry time. Their replica
    died (or is busy: a queued run another replica takes from its backlog is simply run there);
    ``claim_attempt`` still decides who runs each."""
    now = utcnow()
    lease = timedelta(seconds=lease_seconds)
    with session_scope(url) as session:
        query = select(BacktestRun).where(
            or_(
                and_(BacktestRun.state == "running", BacktestRun.heartbeat_at < now - lease),
                and_(BacktestRun.state == "queued", BacktestRun.created_at < now - lease),
                and_(
                    BacktestRun.state == "retrying",
                    BacktestRun.finished_at < now - lease - timedelta(seconds=retry_delay_seconds),
                ),
            )
        )
        return list(session.scalars(query.order_by(BacktestRun.id)).all())


def set_config(url: str, run_id: int, config: dict[str, Any]) -> None:
    with session_scope(url) as session:
        _get(session, run_id).config = config


def mark_succeeded(url: str, run_id: int, json_path: str, html_path: str, summary: dict[str, Any]) -> None:
    with session_scope(url) as session:
        run = _get(session, run_id)
        run.state, run.json_path, run.html_path = "succeeded", json_path, html_path
        run.summary, run.finished_at, run.error = summary, utcnow(), None


def mark_failed(url: str, run_id: int, error: str, will_retry: bool) -> None:
    with session_scope(url) as session:
        run = _get(session, run_id)
        run.state, run.error, run.finished_at = (
            ("retrying" if will_retry else "failed"),
            error[:4000],
            utcnow(),
        )


def get_run(url: str, run_id: int) -> BacktestRun:
    with session_scope(url) as session:
        return _get(session, run_id)


def list_runs(url: str, state: str | None = None, limit: int = 100) -> list[BacktestRun]:
    with session_scope(url) as session:
        query = select(BacktestRun).order_by(BacktestRun.id.desc()).limit(limit)
        if state is not None:
            query = query.where(BacktestRun.state == state)
        return list(session.scalars(query).all())


def unfinished_runs(url: str) -> list[BacktestRun]:
    """Runs that were queued, running or waiting for a retry when the service last stopped."""
    with session_scope(url) as session:
        query = select(BacktestRun).where(BacktestRun.state.in_(("queued", "running", "retrying")))
        return list(session.scalars(query.order_by(BacktestRun.id)).all())


def last_succeeded(url: str) -> BacktestRun | None:
    runs = list_runs(url, state="succeeded", limit=1)
    return runs[0] if runs else None


def _get(session, run_id: int) -> BacktestRun:  # type: ignore[no-untyped-def]
    run = session.get(BacktestRun, run_id)
    if run is None:
        raise NotFound(f"backtest run {run_id} does not exist", param="id")
    return run
