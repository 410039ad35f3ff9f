"""Two backtest replicas on one database (SQLite and PostgreSQL): a cron fire makes one run,
replicas starting together resume each unfinished run once, a run whose replica died is taken
over and a live one's is not.

Schedulers, threads, claims and database are real. Where a test counts attempts it replaces
``run_backtest`` with a stand-in that records the call and marks the run succeeded (after a
pause that keeps the race open); the rolling test runs real backtests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from services.backtest import schedule, store
from services.backtest.schedule import ROLLING_CLAIM_JOB, BacktestScheduler, last_fire_time
from services.backtest.schemas import BacktestConfig, BaselineSpec
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.models import BacktestRun, ScheduleClaim, utcnow
from tests.backtest.conftest import START, seed_market, stored_runs, wait_until


def _skipped(job: str) -> float:
    return REGISTRY.get_sample_value("hsig_backtest_scheduled_skipped_total", {"job": job}) or 0.0


@pytest.fixture
def settings(backtest_settings: BacktestSettings) -> BacktestSettings:
    return backtest_settings.model_copy(
        update={"schedule_base_model": False, "rolling_window_days": 3, "bootstrap_reps": 20}
    )


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[int]]:
    """Counts ``run_backtest`` calls per run; each takes 0.3 s and succeeds."""
    calls: Counter[int] = Counter()
    lock = threading.Lock()
    pause = {"s": 0.3}

    def stand_in(settings: BacktestSettings, config: Any, trigger: str, run_id: int) -> None:
        with lock:
            calls[run_id] += 1
        time.sleep(pause["s"])
        store.mark_succeeded(settings.resolved_database_url, run_id, "r.json", "r.html", {"rows": []})

    monkeypatch.setattr(schedule, "run_backtest", stand_in)
    calls.pause = pause  # type: ignore[attr-defined]
    yield calls


def _api_run(url: str, state: str = "queued") -> int:
    config = BacktestConfig(start=START, predictors=[BaselineSpec(name="majority")])
    return store.create_run(url, config.model_dump(mode="json"), "api", state=state)[0]


def _set(url: str, run_id: int, **values: Any) -> None:
    with session_scope(url) as session:
        run = session.get(BacktestRun, run_id)
        for name, value in values.items():
            setattr(run, name, value)


def test_last_fire_time_names_the_fire_a_late_run_belongs_to() -> None:
    daily = schedule.cron_trigger("0 6 * * *")
    assert last_fire_time(daily, datetime(2026, 3, 4, 6, 0, 0, 3000, tzinfo=UTC)) == datetime(
        2026, 3, 4, 6, tzinfo=UTC
    )
    late = datetime(2026, 3, 4, 7, 42, tzinfo=UTC)  # the worker was busy for 102 minutes
    assert last_fire_time(daily, late) == datetime(2026, 3, 4, 6, tzinfo=UTC)
    assert last_fire_time(daily, datetime(2026, 3, 4, 5, 59, tzinfo=UTC)) == datetime(
        2026, 3, 3, 6, tzinfo=UTC
    )
    every_second = schedule.cron_trigger("*/1 * * * * *")
    assert last_fire_time(every_second, late + timedelta(seconds=7.5)) == late + timedelta(seconds=7)


def test_two_replicas_firing_one_minute_create_one_run(settings: BacktestSettings) -> None:
    url = settings.resolved_database_url
    seed_market(url)
    settings = settings.model_copy(update={"schedule_cron": "* * * * *"})
    replicas = [BacktestScheduler(settings), BacktestScheduler(settings)]
    minute = datetime(2026, 3, 4, 6, 0, tzinfo=UTC)
    skipped = _skipped("rolling")
    start = threading.Barrier(8)

    def fire(number: int) -> None:  # both replicas, four times each, within the minute's fire
        start.wait()
        replicas[number % 2].run_rolling(now=minute + timedelta(seconds=number * 5, microseconds=3000))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fire, range(8)))
    runs = stored_runs(url)
    assert [(run.trigger, run.state, run.attempts) for run in runs] == [("schedule", "succeeded", 1)]
    assert _skipped("rolling") - skipped == 7
    replicas[1].run_rolling(now=minute + timedelta(minutes=1, seconds=2))  # the next minute's fire
    assert [run.state for run in stored_runs(url)] == ["succeeded", "succeeded"]
    with session_scope(url) as session:
        slots = session.scalars(
            select(ScheduleClaim.slot).where(ScheduleClaim.job == ROLLING_CLAIM_JOB)
        ).all()
    assert sorted(slots) == ["2026-03-04T06:00:00+00:00", "2026-03-04T06:01:00+00:00"]


def test_two_running_replicas_run_each_fire_once(settings: BacktestSettings, attempts: Counter[int]) -> None:
    url = settings.resolved_database_url
    seed_market(url)
    attempts.pause["s"] = 0.05  # type: ignore[attr-defined]
    settings = settings.model_copy(update={"schedule_cron": "*/1 * * * * *"})  # every second
    replicas = [BacktestScheduler(settings), BacktestScheduler(settings)]
    for replica in replicas:
        replica.start()
    time.sleep(3.2)
    for replica in replicas:
        replica.scheduler.shutdown(wait=True)
    with session_scope(url) as session:
        fires = session.scalars(
            select(ScheduleClaim.slot).where(ScheduleClaim.job == ROLLING_CLAIM_JOB)
        ).all()
    runs = stored_runs(url)
    assert len(fires) >= 2 and len(runs) == len(fires)  # one run per claimed fire
    assert set(attempts.values()) == {1} and len(attempts) == len(runs)
    assert all(run.state == "succeeded" and run.attempts == 1 for run in runs)


def test_replicas_starting_together_run_each_unfinished_run_once(
    settings: BacktestSettings, attempts: Counter[int]
) -> None:
    url = settings.resolved_database_url
    queued = [_api_run(url) for _ in range(4)]
    retrying = _api_run(url)
    _set(url, retrying, state="retrying", attempts=1, error="inference timed out", finished_at=utcnow())
    crashed = _api_run(url)  # left running by a single replica that died (no heartbeat: older version)
    _set(url, crashed, state="running", attempts=1, started_at=utcnow() - timedelta(hours=1))
    replicas = [BacktestScheduler(settings), BacktestScheduler(settings)]
    start = threading.Barrier(2)

    def boot(replica: BacktestScheduler) -> None:
        start.wait()
        replica.start()

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(boot, replicas))
        wait_until(lambda: all(run.state == "succeeded" for run in stored_runs(url)))
    finally:
        for replica in replicas:
            replica.shutdown()
    assert attempts == dict.fromkeys([*queued, retrying, crashed], 1)
    by_id = {run.id: run for run in stored_runs(url)}
    assert [by_id[run_id].attempts for run_id in queued] == [1, 1, 1, 1]
    assert by_id[retrying].attempts == by_id[crashed].attempts == 2
    assert {by_id[run_id].holder for run_id in by_id} <= {replica.holder for replica in replicas}


def test_racing_attempts_of_one_run_start_it_once(settings: BacktestSettings) -> None:
    url = settings.resolved_database_url
    run_id = _api_run(url)
    start = threading.Barrier(8)

    def claim(number: int) -> int | None:
        start.wait()
        return store.claim_attempt(
            url, run_id, f"replica-{number}", stale_before=utcnow() - timedelta(minutes=1)
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(claim, range(8)))
    assert sorted(results, key=str) == [1] + [None] * 7
    run = store.get_run(url, run_id)
    assert (run.state, run.attempts, run.holder) == ("running", 1, f"replica-{results.index(1)}")


def test_a_dead_replicas_run_is_taken_over_and_a_live_ones_is_not(
    settings: BacktestSettings, attempts: Counter[int]
) -> None:
    url = settings.resolved_database_url
    settings = settings.model_copy(update={"lease_seconds": 0.8})
    dead = _api_run(url)
    _set(
        url, dead, state="running", attempts=1, holder="gone:1", heartbeat_at=utcnow() - timedelta(minutes=5)
    )
    live = _api_run(url)
    _set(url, live, state="running", attempts=1, holder="alive:2", heartbeat_at=utcnow())
    alive = threading.Event()

    def live_replica() -> None:  # the other replica renews its run's heartbeat while it lives
        while not alive.wait(0.1):
            assert store.heartbeat(url, live, "alive:2")

    beating = threading.Thread(target=live_replica, daemon=True)
    beating.start()
    replica = BacktestScheduler(settings)
    replica.start()
    try:
        wait_until(lambda: store.get_run(url, dead).state == "succeeded")
        time.sleep(2.0)  # five sweeps
        run = store.get_run(url, live)
        assert (run.state, run.attempts, run.holder) == ("running", 1, "alive:2")
        alive.set()  # the live replica dies: its lease runs out and a sweep takes the run over
        beating.join()
        wait_until(lambda: store.get_run(url, live).state == "succeeded", timeout_seconds=20)
    finally:
        replica.shutdown()
    assert attempts == {dead: 1, live: 1}
    assert store.get_run(url, dead).attempts == store.get_run(url, live).attempts == 2


def test_a_long_attempt_keeps_its_run_through_heartbeats(
    settings: BacktestSettings, attempts: Counter[int]
) -> None:
    url = settings.resolved_database_url
    settings = settings.model_copy(update={"lease_seconds": 0.6})  # a beat every 0.15 s, sweeps every 0.3 s
    attempts.pause["s"] = 2.5  # type: ignore[attr-defined]  # four leases long
    first, second = BacktestScheduler(settings), BacktestScheduler(settings)
    first.start()
    second.start()
    try:
        run_id = first.submit(BacktestConfig(start=START, predictors=[BaselineSpec(name="majority")]))[0]
        wait_until(lambda: store.get_run(url, run_id).state == "succeeded")
    finally:
        first.shutdown()
        second.shutdown()
    run = store.get_run(url, run_id)
    assert attempts == {run_id: 1} and run.attempts == 1 and run.holder == first.holder
