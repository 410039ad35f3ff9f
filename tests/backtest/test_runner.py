"""A whole backtest on the database (SQLite and PostgreSQL): rows, baselines, report, run record."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from services.backtest.html_report import SECTIONS
from services.backtest.rows import load_rows
from services.backtest.runner import run_backtest
from services.backtest.schemas import BacktestConfig, BaselineSpec
from services.backtest.settings import BacktestSettings
from services.common.db import session_scope
from services.common.db.models import BacktestRun, Candle, LabelledRow
from services.common.errors import InvalidInput
from tests.backtest.conftest import START

TEST_START = START + timedelta(days=5)


def test_baselines_report_every_section(backtest_settings: BacktestSettings, market: dict) -> None:
    result = run_backtest(backtest_settings, BacktestConfig(title="Baselines", start=TEST_START))
    report = json.loads(result.json_path.read_text())
    url = backtest_settings.resolved_database_url
    with session_scope(url) as session:
        rows = session.scalars(select(LabelledRow).where(LabelledRow.headline_time >= TEST_START)).all()
        run = session.get(BacktestRun, result.run_id)
    assert report["data"]["rows"] == len(rows)
    assert report["data"]["label_windows"] == len({row.entry_time for row in rows})
    assert report["data"]["label_windows"] < len(rows)  # several headlines share an hour
    names = [p["name"] for p in report["predictors"]]
    assert names == ["always_increase", "always_decrease", "majority", "momentum", "coin_flip"]
    by_name = {p["name"]: p["metrics"] for p in report["predictors"]}
    share_increase = np.mean([row.label == "Increase" for row in rows])
    assert by_name["always_increase"]["classification"]["accuracy"] == pytest.approx(share_increase)
    assert by_name["always_increase"]["bias"]["biased"]  # the window-aware verdict
    assert by_name["always_increase"]["bias"]["biased_if_rows_independent"]
    assert by_name["always_increase"]["bias"]["gap_interval_windows"][0] > 0
    assert by_name["always_increase"]["calibration"] is None
    assert by_name["coin_flip"]["calibration"]["brier"] == pytest.approx(0.25)
    assert report["buy_and_hold"]["cumulative_return"] != 0
    assert run.state == "succeeded" and run.attempts == 1 and run.html_path == str(result.html_path)
    html = result.html_path.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', html)) == 4
    assert "always_increase" in result.summary_table and "buy_and_hold" in result.summary_table


def test_majority_learns_only_from_outcomes_known_before_the_window(
    backtest_settings: BacktestSettings, market: dict
) -> None:
    result = run_backtest(
        backtest_settings, BacktestConfig(start=TEST_START, predictors=[BaselineSpec(name="majority")])
    )
    with session_scope(backtest_settings.resolved_database_url) as session:
        known = session.scalars(select(LabelledRow.label).where(LabelledRow.exit_time <= TEST_START)).all()
    share = np.mean([label == "Increase" for label in known])
    section = result.report["predictors"][0]
    assert f"majority of {len(known)} rows" in section["notes"][0]
    assert section["metrics"]["calibration"]["brier"] is not None
    expected = 1 if share >= 0.5 else 0
    assert set(result.report["predictions"]["majority"]) == {expected}


def test_momentum_sees_only_closed_candles(backtest_settings: BacktestSettings, market: dict) -> None:
    url = backtest_settings.resolved_database_url
    config = BacktestConfig(start=TEST_START, predictors=[BaselineSpec(name="momentum")])
    before = run_backtest(backtest_settings, config).report["predictions"]["momentum"]
    rows = load_rows(url, "BTC/USD", "1h", TEST_START)
    with session_scope(url) as session:
        candles = {c.open_time: c for c in session.scalars(select(Candle)).all()}
    for published, predicted in zip(rows.published_at, before, strict=True):
        hour = published.replace(minute=0, second=0, microsecond=0)
        closed = candles[hour - timedelta(hours=1)]  # the candle that ended at the top of the hour
        assert predicted == int(closed.close > closed.open)
    # Rewrite the candle a middle headline falls in, and every later one: its prediction, and
    # those of all earlier headlines, must not move (that candle had not closed yet).
    middle = len(rows) // 2
    cut = rows.published_at[middle].replace(minute=0, second=0, microsecond=0)
    with session_scope(url) as session:
        for candle in session.scalars(select(Candle).where(Candle.open_time >= cut)).all():
            candle.close = candle.open * (0.5 if candle.close > candle.open else 2.0)
    after = run_backtest(backtest_settings, config).report["predictions"]["momentum"]
    seen_before_cut = [i for i, t in enumerate(rows.published_at) if t < cut + timedelta(hours=1)]
    assert middle in seen_before_cut
    assert [after[i] for i in seen_before_cut] == [before[i] for i in seen_before_cut]
    later = [i for i in range(len(rows)) if i not in seen_before_cut]
    assert all(after[i] != before[i] for i in later)  # the rewrite flipped every closed move after it


def test_empty_window_is_a_clear_error(backtest_settings: BacktestSettings, market: dict) -> None:
    future = datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(
        InvalidInput, match=r"no labelled rows for BTC/USD 1h between 2030.*stored rows run from 2019"
    ):
        run_backtest(backtest_settings, BacktestConfig(start=future))
    with session_scope(backtest_settings.resolved_database_url) as session:
        assert session.scalars(select(BacktestRun)).all() == []  # bad input stores no run


def test_no_rows_at_all_says_what_to_do(backtest_settings: BacktestSettings) -> None:
    with pytest.raises(InvalidInput, match="run `hsig ingest`"):
        run_backtest(backtest_settings, BacktestConfig())


def test_config_refuses_a_reversed_window() -> None:
    with pytest.raises(ValueError, match="is not before end"):
        BacktestConfig(start=TEST_START, end=TEST_START - timedelta(days=1))
