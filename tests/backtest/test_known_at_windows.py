"""The backtest reads, guards and baselines rows by when they were known (issue 11).

Labelled rows of every precision (second, minute, hour, day) in several zones, written to the
database (SQLite and PostgreSQL) as the labeller writes them: headline_time the period's start,
known_at its end, entry at the first hourly candle opening at or after known_at. Checked on
them: a backtest window holds exactly the rows whose split time (known_at - 1 s) is in it; the
trainer's windows over the same rows, recorded in a manifest, leave the leakage guard no row
whose label could overlap a training label, and refuse none that could not; the momentum
baseline reads the last candle closed by known_at; the scheduled rolling window holds the
newest row even when it is dated only to the day.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.backtest.leakage import find_overlaps
from services.backtest.rows import load_rows, previous_closed_moves
from services.backtest.schedule import rolling_config
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.models import Candle
from services.common.errors import InvalidInput
from services.common.labelled_rows import read_labelled_rows
from services.common.schemas import AdapterManifest, TrainingWindow
from services.common.time_precision import Precision
from services.trainer.config import DataConfig
from services.trainer.datasets import trend_split
from tests.support.known_at_rows import Row, labelled, store

START = datetime(2020, 3, 1, tzinfo=UTC)  # crosses the US and EU DST changes
HOURS = 24 * 40
HOUR = timedelta(hours=1)
ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe")
SYMBOL, HORIZON = "BTC/USD", "1h"


def add_row(session, number: int, moment: datetime, precision: Precision, zone: str, opens, closes) -> Row:  # type: ignore[no-untyped-def]
    """One headline and its labelled row, as the labeller derives them from ``moment``."""
    row = labelled(number, moment, precision, zone)
    index = (row.entry_time - START) // HOUR  # the first candle opening at or after known_at
    return store(session, row, float(opens[index]), float(closes[index]))


def prices(seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    closes = 5000 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.01, HOURS)))
    return np.concatenate([[5000.0], closes[:-1]]), closes


def seed(url: str, count: int = 240, seed: int = 11) -> list[Row]:
    """Hourly candles on a random walk and ``count`` labelled rows of random precision and zone."""
    rng = random.Random(seed)
    opens, closes = prices(seed)
    with session_scope(url) as session:
        for i in range(HOURS):
            high, low = float(max(opens[i], closes[i])), float(min(opens[i], closes[i]))
            session.add(
                Candle(
                    exchange="test", symbol=SYMBOL, timeframe="1h", open_time=START + i * HOUR,
                    open=float(opens[i]), high=high, low=low, close=float(closes[i]), volume=1.0,
                )
            )  # fmt: skip
        stored = []
        for number in range(count):
            moment = START + timedelta(seconds=rng.randrange(2 * 86_400, (HOURS - 50) * 3600))
            precision, zone = rng.choice(list(Precision)), rng.choice(ZONES)
            stored.append(add_row(session, number, moment, precision, zone, opens, closes))
        return stored


@pytest.fixture
def stored(backtest_settings: BacktestSettings) -> list[Row]:
    return seed(backtest_settings.resolved_database_url)


def test_a_backtest_window_holds_the_rows_known_in_it(
    backtest_settings: BacktestSettings, stored: list[Row]
) -> None:
    url = backtest_settings.resolved_database_url
    rng = random.Random(3)
    straddling = 0
    for _ in range(25):  # windows cut at any second, mostly not on a midnight
        start = START + timedelta(seconds=rng.randrange(0, HOURS * 3600))
        end = start + timedelta(seconds=rng.randrange(3600, 10 * 86_400))
        expected = {row.id for row in stored if start <= row.split < end}
        try:
            rows = load_rows(url, SYMBOL, HORIZON, start, end)
        except InvalidInput:
            assert not expected
            continue
        assert set(rows.row_id.tolist()) == expected
        assert np.all(rows.known_times() > start.timestamp()) and np.all(
            rows.known_times() <= end.timestamp()
        )
        assert np.all(rows.entry_time >= rows.known_times())
        straddling += sum(1 for row in stored if row.headline_time < start <= row.split < end)
    assert straddling  # some day or hour rows began before a window and were known inside it


def test_the_trainers_manifest_and_the_guard_agree_on_what_is_out_of_sample(
    backtest_settings: BacktestSettings, stored: list[Row]
) -> None:
    """Train on the rows (by share, as `hsig train run` does), record the window as the manifest
    does, and score every later window: the guard refuses exactly the rows at or before
    last_row_time + embargo, and every row it lets through became known after each training label
    was decided."""
    url = backtest_settings.resolved_database_url
    with session_scope(url) as session:
        rows = read_labelled_rows(session, SYMBOL, HORIZON)
    split = trend_split(rows, DataConfig(validation_fraction=0.2, test_fraction=0.2))
    window = TrainingWindow(
        first_row_time=split.first_row_time,
        last_row_time=split.last_row_time,
        embargo_seconds=split.embargo_seconds,
    )
    end = window.end_with_embargo()
    assert end is not None
    training_ids = {int(example.key.split(":")[1]) for example in split.train}
    by_id = {row.id: row for row in stored}
    last_training_exit = max(by_id[i].exit_time for i in training_ids)
    assert last_training_exit <= end
    assert all(by_id[i].known_at <= window.last_row_time + timedelta(seconds=1) for i in training_ids)  # type: ignore[operator]

    class Adapter:  # a predictor as the guard sees one: a name and a manifest
        name = "adapter"

        def manifest(self) -> AdapterManifest:
            return AdapterManifest(
                name="a", base_model="tiny", method="lora", task="btc-trend", training_window=window
            )

    scored = load_rows(url, SYMBOL, HORIZON, START, START + HOURS * HOUR)
    overlaps = find_overlaps([Adapter()], scored)  # type: ignore[list-item]
    in_sample = {row.id for row in stored if row.split <= end}
    assert (overlaps[0].rows_in_sample if overlaps else 0) == len(in_sample)
    for row in stored:
        if row.id not in in_sample:  # let through: known, and entered, after every training exit
            assert row.known_at > last_training_exit and row.entry_time >= last_training_exit
    # a day-dated row whose day began before the end and is known after it is not refused
    assert any(row.headline_time <= end < row.split for row in stored if row.id not in in_sample)


def test_momentum_reads_the_last_candle_closed_by_known_at(
    backtest_settings: BacktestSettings, stored: list[Row]
) -> None:
    url = backtest_settings.resolved_database_url
    rows = load_rows(url, SYMBOL, HORIZON, START, START + HOURS * HOUR)
    moves = previous_closed_moves(url, rows)
    with session_scope(url) as session:
        candles = {c.open_time: c.close - c.open for c in session.query(Candle).all()}
    by_id = {row.id: row for row in stored}
    for row_id, move in zip(rows.row_id.tolist(), moves, strict=True):
        row = by_id[row_id]
        last_open = START + math.floor((row.known_at - START) / HOUR) * HOUR - HOUR  # closes <= known_at
        assert move == pytest.approx(candles[last_open])
        assert last_open + HOUR <= row.known_at < last_open + 2 * HOUR
    assert any(by_id[i].precision is Precision.day for i in rows.row_id.tolist())


def test_the_rolling_window_holds_the_newest_row_dated_only_to_the_day(
    backtest_settings: BacktestSettings, stored: list[Row]
) -> None:
    """The newest row is dated only to a day in New York: its headline_time (that day's first
    midnight there) is older than the newest second-precision row, its known_at the newest."""
    url = backtest_settings.resolved_database_url
    opens, closes = prices()
    newest_second = START + (HOURS - 35) * HOUR + timedelta(minutes=20, seconds=7)  # 8 April
    with session_scope(url) as session:
        second = add_row(session, 1000, newest_second, Precision.second, "UTC", opens, closes)
        day = add_row(session, 1001, newest_second, Precision.day, "America/New_York", opens, closes)
    assert day.headline_time < second.headline_time and day.known_at > second.known_at
    config = rolling_config(backtest_settings.model_copy(update={"rolling_window_days": 3.0}))
    assert config.end == day.known_at  # the window [start, end) on known_at - 1 s ends just after it
    rows = load_rows(url, SYMBOL, HORIZON, config.start, config.end)
    assert {day.id, second.id} <= set(rows.row_id.tolist())


def test_an_empty_window_says_rows_are_read_by_known_at(backtest_settings: BacktestSettings) -> None:
    """A day-dated row whose day began inside the window is known only at its end: the window is
    rightly empty, and the message reports the stored rows on the axis it read (known_at - 1 s),
    not on the headline time, which would put the row inside the window it is missing from."""
    url = backtest_settings.resolved_database_url
    opens, closes = prices()
    with session_scope(url) as session:
        day = add_row(session, 0, START + timedelta(days=5, hours=12), Precision.day, "UTC", opens, closes)
    start, end = day.headline_time - HOUR, day.split  # windows are start <= known_at - 1 s < end
    with pytest.raises(InvalidInput) as caught:
        load_rows(url, SYMBOL, HORIZON, start, end)
    message = caught.value.message
    assert f"between {start.isoformat()} and {end.isoformat()} by when they became known" in message
    assert "(known_at - 1 s, not the headline time)" in message
    assert f"the 1 stored row runs from {day.split.isoformat()} to {day.split.isoformat()}" in message
    assert day.headline_time.isoformat() not in message
    assert load_rows(url, SYMBOL, HORIZON, start, end + timedelta(seconds=1)).row_id.tolist() == [day.id]
