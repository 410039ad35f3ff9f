"""Runs off the request path: queued API runs and the cron-driven rolling-window backtest.

Runs are items of the work queue (``services.common.queue``, through ``store.RUNS``). A run
that fails is recorded (state "retrying" with its error, claimable again from
``available_at``) and tried again after ``retry_delay_seconds``, up to ``max_attempts``; then
it stays "failed" with the error, is logged at ERROR and counted in
``hsig_backtest_runs_total{outcome="failed"}``. Nothing is dropped silently: runs left queued,
running or retrying when the service stopped are picked up again when it starts. Bad input
(an unknown adapter in an API request) is not retried; a scheduled run is, since the rows it
lacked may have arrived by the next attempt.

Several replicas may share one database. Each cron fire is claimed in ``schedule_claims``
(slot: the fire time), so one replica runs it and the others skip it. Each attempt is claimed
on the run itself (``RUNS.claim``), so two replicas that both resume (or are both handed) a
run start it once; the holder renews its lease with a heartbeat every quarter lease while it
runs, and writes the outcome under its claim. A run whose lease is older than
``lease_seconds`` (its replica died) is taken over by the next replica that starts, or settled
by the next sweep (every half lease: requeued while attempts are left, then taken; failed once
they are spent). Skips are logged at debug level and counted in
``hsig_backtest_scheduled_skipped_total{job}``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, select

from services.backtest import store
from services.backtest.metrics import SCHEDULED_SKIPPED
from services.backtest.post_cutoff import predictor_cutoffs, window_statement
from services.backtest.predictors.factory import build_predictor
from services.backtest.predictors.registry import registered_adapters
from services.backtest.runner import run_backtest
from services.backtest.schemas import BASELINES, BacktestConfig, BaselineSpec, ServiceSpec
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.models import LabelledRow, utcnow
from services.common.errors import HsigError, InvalidInput, TemporaryError
from services.common.queue import ACTIVE, Claim, State
from services.common.schedule_claims import HOLDER, claim
from services.common.schemas import BASE_MODEL_NAME, TrainingWindow

log = logging.getLogger(__name__)
ROLLING_JOB_ID = "rolling-backtest"
ROLLING_CLAIM_JOB = "backtest-rolling"  # the job name its slots are claimed under
SWEEP_JOB_ID = "sweep-orphaned-runs"


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


def last_fire_time(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The trigger's latest fire time at or before ``now``; None if it never fired in 2 years.

    APScheduler does not hand a job the time it was scheduled for. A late fire (the one worker
    thread was busy with another backtest) still names the fire it belongs to, or a later one
    if more fires have passed since (coalesced: one run for the backlog, as the job runs).
    Each replica reads its own clock: replicas agree on the slot unless their clocks differ
    by about the time between two fires.
    """
    lookback = timedelta(seconds=1)
    while lookback < timedelta(days=800):  # double back until a fire lies inside the window
        fire = trigger.get_next_fire_time(None, now - lookback)
        if fire is not None and fire <= now:
            while (later := trigger.get_next_fire_time(fire, now)) is not None and later <= now:
                fire = later
            return fire.astimezone(UTC)
        lookback *= 2
    return None


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
            select(func.max(LabelledRow.known_at)).where(
                LabelledRow.symbol == settings.symbol, LabelledRow.horizon == horizon
            )
        )
    # The window is on the split axis (known_at - 1 s, services.common.labelled_rows): it ends
    # just after the newest row's, so that row is in it even if it is dated only to the day.
    end = newest if newest is not None else datetime.now(UTC) + timedelta(seconds=1)
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
    # Fresh headlines are after the models' knowledge cutoffs only if the cutoffs say so: checked.
    built = [build_predictor(spec, settings, 0, None) for spec in predictors]
    notes.append(window_statement(predictor_cutoffs(predictors, built, settings), start))
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
        self.holder = f"{HOLDER}:{uuid.uuid4().hex[:8]}"  # this scheduler, among replicas
        self.lease = timedelta(seconds=settings.lease_seconds)
        # The sweep has its own thread: the worker may be busy with a backtest for a long time.
        executors = {"default": ThreadPoolExecutor(1), "sweep": ThreadPoolExecutor(1)}
        self.scheduler = BackgroundScheduler(executors=executors, timezone=UTC)

    def start(self) -> None:
        # Idempotent: the app retries start() until the database answers, and a retry may
        # follow a start that had already started the scheduler.
        if not self.scheduler.running:
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
            self.scheduler.add_job(
                self.sweep,
                "interval",
                seconds=self.settings.lease_seconds / 2,
                id=SWEEP_JOB_ID,
                executor="sweep",
                coalesce=True,
                max_instances=1,
            )
            self.scheduler.start()
        now = utcnow()
        for run in store.unfinished_runs(self.url):
            if run.state in ACTIVE and run.heartbeat_at is not None and run.heartbeat_at >= now - self.lease:
                # Another replica runs it (or this host's last process did, and its lease has
                # not run out yet: the sweep takes it over once it has).
                log.info("backtest run %d is running on %s; not resumed", run.id, run.holder)
                continue
            wait = (run.available_at - now).total_seconds() if run.available_at else 0.0
            log.info("resuming backtest run %d (was %s)", run.id, run.state)
            self._enqueue(run.id, delay_seconds=max(wait, 0.0))  # a retry keeps its time

    def shutdown(self) -> None:
        if self.scheduler.running:  # never started when the database never answered
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
            self._enqueue(run_id, delay_seconds=0)
        return run_id, replayed

    def run_rolling(self, now: datetime | None = None) -> None:
        """One scheduled run: recorded first, so even a failure to build its config is kept.

        With a cron, the fire is claimed first (slot: the fire time, ``last_fire_time``); a
        replica that loses the claim skips it. ``now`` is for tests.
        """
        if self.trigger is not None:
            now = now or datetime.now(UTC)
            fire = last_fire_time(self.trigger, now) or now.replace(second=0, microsecond=0)
            slot = fire.isoformat(timespec="seconds")
            if not claim(self.url, ROLLING_CLAIM_JOB, slot, self.holder):
                log.debug("rolling backtest %s already claimed by another replica, skipped", slot)
                SCHEDULED_SKIPPED.labels("rolling").inc()
                return
        run_id, _ = store.create_run(self.url, {"title": "rolling backtest"}, "schedule")
        self.attempt(run_id)

    def attempt(self, run_id: int) -> None:
        """Claim the run's next attempt (or take over one whose lease expired) and run it while
        a heartbeat renews the lease; the outcome is written under the claim."""
        claim = store.RUNS.claim(
            self.url,
            self.holder,
            run_id,
            lease_seconds=self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
        )
        if claim is None:
            log.debug("backtest run %d is another replica's (or finished), skipped", run_id)
            SCHEDULED_SKIPPED.labels("run").inc()
            return
        with store.RUNS.keep_alive(self.url, claim, self.settings.lease_seconds / 4):
            run = store.get_run(self.url, run_id)
            try:
                if run.trigger == "schedule":  # each attempt looks at the newest rows and adapters
                    config = rolling_config(self.settings)
                    store.RUNS.update(self.url, claim, config=config.model_dump(mode="json"))
                else:
                    config = BacktestConfig.model_validate(run.config)
                run_backtest(self.settings, config, trigger=run.trigger, run_id=run_id)
            except Exception as exc:  # recorded and maybe retried: never a silent skip
                message = exc.message if isinstance(exc, HsigError) else f"{type(exc).__name__}: {exc}"
                # Bad input stays bad; a scheduled run may find the rows it lacked on the next try.
                retry = run.trigger == "schedule" or isinstance(exc, TemporaryError)
                self._failed(claim, message, retry=retry)

    def sweep(self) -> None:
        """Settle runs whose lease expired (``RUNS.expire``), then queue here the waiting runs
        nobody took within a lease of their time (``RUNS.overdue``): their replica seems gone."""
        try:
            store.RUNS.expire(self.url, self.settings.lease_seconds, self.settings.max_attempts)
            for run in store.RUNS.overdue(self.url, self.settings.lease_seconds):
                if self.scheduler.get_job(f"run-{run.id}") is None:  # not already queued here
                    log.info(
                        "taking over backtest run %d (%s, last held by %s)", run.id, run.state, run.holder
                    )
                    self._enqueue(run.id, delay_seconds=0)
        except Exception:  # the database may be down for a moment; the next sweep tries again
            log.warning("sweeping orphaned backtest runs failed", exc_info=True)

    def _failed(self, claim: Claim, message: str, retry: bool) -> None:
        delay = self.settings.retry_delay_seconds
        state = store.RUNS.fail(
            self.url,
            claim,
            message,
            max_attempts=self.settings.max_attempts if retry else None,
            retry_after=delay,
        )
        if state is None:
            log.warning(
                "backtest run %d failed, but this replica no longer holds it: %s", claim.item_id, message
            )
        elif state == State.RETRYING:
            log.warning(
                "backtest run %d failed (attempt %d): %s; retrying in %.0f s",
                claim.item_id,
                claim.attempt,
                message,
                delay,
            )
            self._enqueue(claim.item_id, delay_seconds=delay)
        else:
            log.error(
                "backtest run %d failed for good after %d attempts: %s", claim.item_id, claim.attempt, message
            )

    def _enqueue(self, run_id: int, delay_seconds: float) -> None:
        when = datetime.now(UTC) + timedelta(seconds=delay_seconds)
        self.scheduler.add_job(
            self.attempt, "date", run_date=when, args=[run_id], id=f"run-{run_id}", replace_existing=True,
            misfire_grace_time=None,
        )  # fmt: skip
