"""A walk-forward over minute-precision rows, planned and checked fold by fold as it runs.

The demo's shape: CNBC headlines dated to the minute (known_at = headline_time + 60 s, entry at
the first hourly candle opening at or after it) from the walk-forward's start, and RSS rows of
second precision before it, two on the hour (their pubDates give no seconds). The walk-forward
plans on the rows in its range; each fold's trainer reads every row of the symbol and horizon
and refuses an embargo shorter than the longest label span it finds (7200 s: a second row at
12:00:00 exits at 14:00). The plan's default embargo once came from the split time of the
minute rows (7141 s: a row at 12:00 splits at 12:00:59), so the trainer refused every fold,
59 s short; it is now the span from the headline time (7200 s).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from services.backtest.rows import load_rows
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.time_precision import Precision
from services.common.walk_forward_plan import WalkForwardOptions, prepare_walk_forward
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


def test_every_fold_of_a_walk_forward_over_minute_rows_is_accepted_by_its_trainer(
    backtest_settings: BacktestSettings,
) -> None:
    url = backtest_settings.resolved_database_url
    _seed(url)
    options = WalkForwardOptions(id="wf-minutes", start=START, train_days=4, test_days=1, k=3)
    plans, embargo = prepare_walk_forward(backtest_settings, options)
    every_row = load_rows_from_database(url, "BTC/USD", "1h")
    assert longest_label_span_seconds(every_row) == 7200  # what each fold's trainer asks for
    assert embargo == 7200 and len(plans) == 3  # was 7141: every fold refused, 59 s short
    for plan in plans:
        config = _train_config(options, plan, "lora", f"wf-minutes-f{plan.fold}", embargo)
        split = build_dataset(config, url, "BTC/USD", "1h")  # raised "embargo of 7141 s is shorter"
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
