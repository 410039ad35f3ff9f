"""Pipeline fixtures: backtest settings on a fresh SQLite file holding planted hourly rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.backtest.settings import BacktestSettings
from services.common.db.migrate import upgrade
from services.common.settings import get_settings
from tests.trainer.planted import insert_rows, planted_rows


@pytest.fixture
def settings(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BacktestSettings]:
    """SQLite under a fresh data dir, 200 hourly planted rows (2020-01-01 to 2020-01-09)."""
    monkeypatch.setenv("HSIG_SCHEDULE_CRON", "off")
    monkeypatch.setenv("HSIG_BOOTSTRAP_REPS", "100")
    get_settings.cache_clear()
    settings = get_settings(BacktestSettings)
    upgrade(settings.resolved_database_url)
    insert_rows(settings.resolved_database_url, planted_rows(200))
    yield settings
    get_settings.cache_clear()


def stored_jobs(url: str) -> list:
    """Every training job, oldest first."""
    from services.trainer import jobs

    return sorted(jobs.list_jobs(url), key=lambda job: job.id)
