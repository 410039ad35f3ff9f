"""Backtest runs in the database (``backtest_runs``): queued -> running -> succeeded | retrying | failed.

Every state change is one short transaction, so a crash leaves a run in the state it had
reached (a "running" run whose process died is picked up again by the scheduler's start).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from services.common.db import session_scope
from services.common.db.models import BacktestRun, utcnow
from services.common.errors import NotFound
from services.common.idempotency import create_once

TERMINAL = ("succeeded", "failed")


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
    """Mark the run running and count the attempt; returns the attempt number."""
    with session_scope(url) as session:
        run = _get(session, run_id)
        run.state, run.attempts, run.started_at, run.error = "running", run.attempts + 1, utcnow(), None
        return run.attempts


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
