"""Runs off the request path: queued API runs and the cron-driven rolling-window backtest.

A run that fails is recorded (state "retrying" with its error) and tried again after
``retry_delay_s``, up to ``max_attempts``; then it stays "failed" with the error, is logged
at ERROR and counted in ``hsig_backtest_runs_total{outcome="failed"}``. Nothing is dropped
silently: runs left queued, running or retrying when the service stopped are picked up
again when it starts. Bad input (an unknown adapter in an API request) is not retried; a
scheduled run is, since the rows it lacked may have arrived by the next attempt.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, select

from services.backtest import store
from services.backtest.predictors.registry import registered_adapters
from services.backtest.runner import run_backtest
from services.backtest.schemas import BASELINES, BacktestConfig, BaselineSpec, ServiceSpec
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.models import LabelledRow
from services.common.errors import HsigError, InvalidInput, TemporaryError
from services.common.schemas import BASE_MODEL_NAME, TrainingWindow

log = logging.getLogger(__name__)
ROLLING_JOB_ID = "rolling-backtest"


def cron_trigger(expression: str) -> CronTrigger | None:
    """A trigger from 5 crontab fields (or 6, seconds first); None when disabled."""
    fields = expression.split()
    if not fields or expression.strip().lower() == "off":
        return None
    try:
        if len(fields) == 6:
            second, minute, hour, day, month, day_of_week = fields
            return CronTrigger(
                second=second,
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=day_of_week,
                timezone=UTC,
            )
        return CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as exc:
        raise InvalidInput(
            f"HSIG_SCHEDULE_CRON {expression!r} is not a crontab (5 fields, or 6 with seconds first): {exc}",
            param="schedule_cron",
        ) from exc


def rolling_config(settings: BacktestSettings) -> BacktestConfig:
    """The last ``rolling_window_days`` of labelled rows; every adapter not trained on them.

    The window ends at the newest labelled row (live data keeps it near now; a historic
    import still gets a window that holds rows). Adapters whose training window reaches into
    it are left out, and the report's notes say which and why.
    """
    url = settings.resolved_database_url
    horizon = settings.horizons[0]
    with session_scope(url) as session:
        newest = session.scalar(
            select(func.max(LabelledRow.headline_time)).where(
                LabelledRow.symbol == settings.symbol, LabelledRow.horizon == horizon
            )
        )
    end = (newest or datetime.now(UTC)) + timedelta(seconds=1)
    start = end - timedelta(days=settings.rolling_window_days)
    predictors: list = [BaselineSpec(name=name) for name in BASELINES]  # type: ignore[arg-type]
    notes = [f"scheduled rolling window: the last {settings.rolling_window_days:g} days of labelled rows"]
    if settings.schedule_base_model:
        predictors.append(ServiceSpec(adapter=BASE_MODEL_NAME))
    for adapter in registered_adapters(url):
        window = adapter.manifest.get("training_window", {}) if adapter.manifest else {}
        end_with_embargo = TrainingWindow.model_validate(window).end_with_embargo()
        if end_with_embargo is None or end_with_embargo >= start:
            trained = end_with_embargo.isoformat() if end_with_embargo else "an unrecorded time"
            notes.append(
                f"adapter {adapter.name!r} left out: trained on rows up to {trained}, inside this window"
            )
            continue
        predictors.append(ServiceSpec(adapter=adapter.name))
    return BacktestConfig(
        title=f"Rolling {settings.rolling_window_days:g}-day backtest",
        start=start,
        end=end,
        predictors=predictors,
        notes=notes,
    )


class BacktestScheduler:
    """APScheduler with one worker thread: backtests are CPU-heavy and run one at a time."""

    def __init__(self, settings: BacktestSettings) -> None:
        self.settings = settings
        self.url = settings.resolved_database_url
        self.trigger = cron_trigger(settings.schedule_cron)  # bad cron fails at start-up
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)}, timezone=UTC)

    def start(self) -> None:
        if self.trigger is not None:
            self.scheduler.add_job(
                self.run_rolling,
                self.trigger,
                id=ROLLING_JOB_ID,
                coalesce=True,  # a backlog of missed fires runs once, not N times
                max_instances=1,
                misfire_grace_time=None,  # late is better than skipped
            )
            log.info("rolling backtest scheduled: %s (UTC)", self.settings.schedule_cron)
        self.scheduler.start()
        for run in store.unfinished_runs(self.url):
            log.info("resuming backtest run %d (was %s)", run.id, run.state)
            self._enqueue(run.id, delay_s=0)

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=False)

    def submit(
        self, config: BacktestConfig, trigger: str = "api", idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """Queue a run: (run id, whether the idempotency key had queued it already, in which
        case nothing new is queued)."""
        run_id, replayed = store.create_run(
            self.url, config.model_dump(mode="json"), trigger, idempotency_key=idempotency_key
        )
        if not replayed:
            self._enqueue(run_id, delay_s=0)
        return run_id, replayed

    def run_rolling(self) -> None:
        """One scheduled run: recorded first, so even a failure to build its config is kept."""
        run_id, _ = store.create_run(self.url, {"title": "rolling backtest"}, "schedule")
        self.attempt(run_id)

    def attempt(self, run_id: int) -> None:
        store.start_attempt(self.url, run_id)
        run = store.get_run(self.url, run_id)
        try:
            if run.trigger == "schedule":  # each attempt looks at the newest rows and adapters
                config = rolling_config(self.settings)
                store.set_config(self.url, run_id, config.model_dump(mode="json"))
            else:
                config = BacktestConfig.model_validate(run.config)
            run_backtest(self.settings, config, trigger=run.trigger, run_id=run_id)
        except Exception as exc:  # recorded and maybe retried: never a silent skip
            message = exc.message if isinstance(exc, HsigError) else f"{type(exc).__name__}: {exc}"
            # Bad input stays bad; a scheduled run may find the rows it lacked on the next try.
            retry = run.trigger == "schedule" or isinstance(exc, TemporaryError)
            self._failed(run_id, message, retry=retry)

    def _failed(self, run_id: int, message: str, retry: bool) -> None:
        attempts = store.get_run(self.url, run_id).attempts
        will_retry = retry and attempts < self.settings.max_attempts
        store.mark_failed(self.url, run_id, message, will_retry=will_retry)
        if will_retry:
            log.warning(
                "backtest run %d failed (attempt %d): %s; retrying in %.0f s",
                run_id,
                attempts,
                message,
                self.settings.retry_delay_s,
            )
            self._enqueue(run_id, delay_s=self.settings.retry_delay_s)
        else:
            log.error("backtest run %d failed for good after %d attempts: %s", run_id, attempts, message)

    def _enqueue(self, run_id: int, delay_s: float) -> None:
        when = datetime.now(UTC) + timedelta(seconds=delay_s)
        self.scheduler.add_job(
            self.attempt, "date", run_date=when, args=[run_id], id=f"run-{run_id}", replace_existing=True,
            misfire_grace_time=None,
        )  # fmt: skip
