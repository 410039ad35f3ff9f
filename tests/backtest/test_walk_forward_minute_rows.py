"""A walk-forward over minute-precision rows, planned and checked fold by fold as it runs.

The demo's shape: CNBC headlines dated to the minute (known_at = headline_time + 60 s, entry at
the first hourly candle opening at or after it) from the walk-forward's start, and RSS rows of
second precision before it, two on the hour (their pubDates give no seconds). The plan's default
embargo and each fold's trainer use one measure (services/common/embargo.py): the longest span
from the split time to the exit over the rows that matter, every row of the walk-forward's range
for the plan (7141 s: a minute row at 12:00 splits at 12:00:59 and exits at 14:00), the rows of
the fold's windows for its trainer, which lie inside that range. Once the trainer measured every
row of the symbol and horizon, rows before the range included: the second rows on the hour asked
7200 s (the plan had been moved to the span from the headline time to match, 2efd23d), and a
minute row before the start whose entry waited for a candle gap asked 13741 s of every fold.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.backtest.rows import load_rows
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.time_precision import Precision
from services.common.walk_forward_plan import FoldPlan, WalkForwardOptions, prepare_walk_forward
from services.pipeline.walk_forward import _train_config
from services.trainer.datasets import build_dataset, load_rows_from_database
from services.trainer.windows import longest_label_span_seconds, row_time
from tests.support.known_at_rows import labelled, store

START = datetime(2020, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def _seed(url: str) -> None:
    rng = random.Random(5)
    with session_scope(url) as session:
        for hour in range(-24, 0, 3):  # the RSS snapshot before the range: second precision
            moment = START + hour * HOUR + rng.choice([0, 29]) * MINUTE
            store(session, labelled(1000 + hour, moment, Precision.second, "UTC"), 100.0, 101.0)
        late = labelled(999, START - 2 * HOUR, Precision.second, "UTC")  # 22:00:00: exits 7200 s on
        store(session, late, 100.0, 99.0)
        for hour in range(24 * 10):  # minute rows, a third on the hour
            minute = 0 if hour % 3 == 0 else rng.randrange(1, 60)
            row = labelled(hour, START + hour * HOUR + minute * MINUTE, Precision.minute, "UTC")
            store(session, row, 100.0, 101.0 if rng.random() < 0.5 else 99.0)


def _fold_bounds(plan: FoldPlan) -> list[tuple[datetime, datetime]]:
    """The fold's trainer windows, as the trainer measures them."""
    return [(plan.train_start, plan.train_end), (plan.validation_start, plan.validation_end)]


def _check_every_fold(url: str, options: WalkForwardOptions, plans: list[FoldPlan], embargo: float) -> None:
    """Each fold's trainer, configured as the walk-forward configures it, accepts the plan's embargo
    and reads the plan's rows; each test window holds the plan's rows, placed by known_at."""
    every_row = load_rows_from_database(url, "BTC/USD", "1h")
    for plan in plans:
        assert longest_label_span_seconds(every_row, _fold_bounds(plan)) <= embargo  # what its trainer asks
        config = _train_config(options, plan, "lora", f"{options.id}-f{plan.fold}", embargo)
        split = build_dataset(config, url, "BTC/USD", "1h")  # raised "embargo of ... s is shorter"
        assert split.embargo_seconds == embargo
        assert (len(split.train), len(split.validation)) == (plan.train_rows, plan.validation_rows)
        keys = {int(example.key.split(":")[1]) for example in split.train + split.validation}
        read = [row for row in every_row if row.id in keys]
        assert all(row.known_at is not None and row.known_at - row.headline_time == MINUTE for row in read)
        assert max(row.exit_time for row in read) <= plan.test_start  # no label still open at the test
        tested = load_rows(url, "BTC/USD", "1h", plan.test_start, plan.test_end)
        assert len(tested.row_id) == plan.test_rows
        scored = set(tested.row_id.tolist())
        assert all(plan.test_start <= row_time(row) < plan.test_end for row in every_row if row.id in scored)


def test_every_fold_of_a_walk_forward_over_minute_rows_is_accepted_by_its_trainer(
    backtest_settings: BacktestSettings,
) -> None:
    url = backtest_settings.resolved_database_url
    _seed(url)
    options = WalkForwardOptions(id="wf-minutes", start=START, train_days=4, test_days=1, k=3)
    plans, embargo = prepare_walk_forward(backtest_settings, options)
    every_row = load_rows_from_database(url, "BTC/USD", "1h")
    assert longest_label_span_seconds(every_row) == 7200  # the second rows on the hour before the range
    assert embargo == 7141 and len(plans) == 3  # the minute rows': 12:00:59 to 14:00
    _check_every_fold(url, options, plans, embargo)


def test_a_label_stretched_by_a_candle_gap_before_the_range_sets_no_fold_s_embargo(
    backtest_settings: BacktestSettings,
) -> None:
    url = backtest_settings.resolved_database_url
    _seed(url)
    with session_scope(
        url
    ) as session:  # 19:10 (known 19:11), entry at 22:00: the 20:00, 21:00 candles missing
        row = labelled(2000, START - 5 * HOUR + 10 * MINUTE, Precision.minute, "UTC")
        store(session, replace(row, entry_time=START - 2 * HOUR, exit_time=START - HOUR), 100.0, 101.0)
    every_row = load_rows_from_database(url, "BTC/USD", "1h")
    assert longest_label_span_seconds(every_row) == 13741  # 19:10:59 to 23:00: what the trainer once asked
    options = WalkForwardOptions(id="wf-gap", start=START, train_days=4, test_days=1, k=3)
    plans, embargo = prepare_walk_forward(backtest_settings, options)
    assert embargo == 7141 and len(plans) == 3  # the row is before the range: no fold reads it
    _check_every_fold(url, options, plans, embargo)  # raised "embargo of 7200 s ... (13741 s)" each fold
