"""The schedule: a short cron fires a rolling backtest; a failed run is recorded and retried."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.backtest.schedule import BacktestScheduler, cron_trigger, rolling_config
from services.backtest.settings import BacktestSettings
from services.common.errors import InvalidInput
from tests.backtest.conftest import START, register_adapter, seed_market, stored_runs, wait_until


@pytest.fixture
def fast_settings(backtest_settings: BacktestSettings) -> BacktestSettings:
    return backtest_settings.model_copy(
        update={
            "schedule_cron": "*/1 * * * * *",  # every second (6 fields: seconds first)
            "schedule_base_model": False,  # no inference service in these tests
            "rolling_window_days": 3,
            "retry_delay_seconds": 0.2,
            "bootstrap_reps": 50,
        }
    )


def test_schedule_fires_and_a_report_appears(fast_settings: BacktestSettings) -> None:
    url = fast_settings.resolved_database_url
    seed_market(url)
    scheduler = BacktestScheduler(fast_settings)
    scheduler.start()
    try:
        wait_until(lambda: any(run.state == "succeeded" for run in stored_runs(url)))
    finally:
        scheduler.shutdown()
    run = next(run for run in stored_runs(url) if run.state == "succeeded")
    assert run.trigger == "schedule"
    assert Path(run.html_path).read_text().count('id="summary"') == 1
    assert run.config["title"] == "Rolling 3-day backtest"


def test_failed_run_is_recorded_and_retried(fast_settings: BacktestSettings) -> None:
    url = fast_settings.resolved_database_url  # no rows yet: the first attempt must fail
    # Many quick attempts: however slow seeding is on a busy machine, a later retry finds the rows.
    scheduler = BacktestScheduler(
        fast_settings.model_copy(
            update={"schedule_cron": "off", "retry_delay_seconds": 0.3, "max_attempts": 1000}
        )
    )
    scheduler.start()
    try:
        scheduler.run_rolling()
        first = stored_runs(url)[0]
        assert first.state == "retrying" and first.attempts == 1
        assert "no labelled rows" in first.error
        seed_market(url)  # the data arrives before the retry
        wait_until(lambda: stored_runs(url)[0].state == "succeeded")
    finally:
        scheduler.shutdown()
    run = stored_runs(url)[0]
    assert run.attempts >= 2 and run.error is None and len(stored_runs(url)) == 1


def test_run_stays_failed_after_its_last_attempt(fast_settings: BacktestSettings) -> None:
    url = fast_settings.resolved_database_url
    settings = fast_settings.model_copy(update={"schedule_cron": "off", "max_attempts": 2})
    scheduler = BacktestScheduler(settings)
    scheduler.start()
    try:
        scheduler.run_rolling()
        wait_until(lambda: stored_runs(url)[0].state == "failed")
    finally:
        scheduler.shutdown()
    run = stored_runs(url)[0]
    assert run.attempts == 2 and "no labelled rows" in run.error


def test_rolling_config_leaves_out_adapters_trained_on_the_window(fast_settings: BacktestSettings) -> None:
    url = fast_settings.resolved_database_url
    seed_market(url)
    register_adapter(url, "old-enough", START + timedelta(days=5))
    register_adapter(url, "too-recent", START + timedelta(days=15))
    config = rolling_config(fast_settings.model_copy(update={"schedule_base_model": True}))
    adapters = [spec.adapter for spec in config.predictors if spec.kind == "service"]
    assert adapters == ["base", "old-enough"]
    assert any("'too-recent' left out" in note for note in config.notes)


@pytest.mark.parametrize("expression", ["every minute", "61 * * * *", "* * * *"])
def test_bad_cron_is_refused(expression: str) -> None:
    with pytest.raises(InvalidInput, match="HSIG_SCHEDULE_CRON"):
        cron_trigger(expression)


def test_cron_off_disables() -> None:
    assert cron_trigger("off") is None and cron_trigger("") is None
    assert cron_trigger("0 6 * * *") is not None
