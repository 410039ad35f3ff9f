"""Window-aware verdicts: bias and model-against-baseline from a block bootstrap over label windows."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
from scipy.stats import binomtest

from services.backtest.runner import run_backtest
from services.backtest.schemas import BacktestConfig, BaselineSpec
from services.backtest.settings import BacktestSettings
from services.backtest.verdicts import (
    Sample,
    Scored,
    bias_verdict,
    bootstrap_p_value,
    compare_to_baselines,
    mcnemar_exact,
    resample_totals,
    verdict_table,
)
from tests.backtest.conftest import START


def _daily_like(
    rng: np.random.Generator, windows: int = 183, rows: int = 7150
) -> tuple[np.ndarray, np.ndarray]:
    """Headlines on daily candles: ~39 rows per label window, all sharing the window's outcome."""
    window = np.sort(rng.integers(0, windows, rows))
    window = np.unique(window, return_inverse=True)[1]
    outcome = rng.integers(0, 2, int(window.max()) + 1)
    return outcome[window].astype(np.int8), window


def test_a_coin_flip_is_not_biased_by_windows_though_rows_say_so() -> None:
    """The finding: 7,150 rows in 183 windows; the binomial (rows independent) flags a fair coin."""
    rng = np.random.default_rng(12)
    naive_flags = window_flags = 0
    datasets = 100
    for _ in range(datasets):
        y_true, window = _daily_like(rng)
        coin = rng.integers(0, 2, y_true.size).astype(np.int8)
        result = bias_verdict(y_true, coin, Sample.of(window), reps=400, seed=0)
        naive_flags += result["biased_if_rows_independent"]
        window_flags += result["biased"]
        assert result["windows"] == int(window.max()) + 1 and result["rows"] == y_true.size
    # rows as independent: the coin's 50% is tested against a share that moves by window, not by row
    assert naive_flags / datasets > 0.5
    # by windows: about the 5% a test at alpha = 0.05 should flag
    assert window_flags / datasets <= 0.12


def test_always_increase_is_biased_by_windows() -> None:
    rng = np.random.default_rng(1)
    y_true, window = _daily_like(rng)
    result = bias_verdict(y_true, np.ones(y_true.size, dtype=np.int8), Sample.of(window), reps=500, seed=0)
    assert result["biased"] and result["direction"] == "Increase"
    assert result["gap_interval_windows"][0] > 0
    assert result["p_value_windows"] <= 2 / 501  # never 0: (1 + count) / (1 + reps)


def test_repeating_rows_inside_windows_changes_nothing_by_windows() -> None:
    """Copies of a row in its own window add no information: the window-aware figures do not move,
    while the rows-as-independent p-value shrinks as if they did."""
    rng = np.random.default_rng(2)
    windows = 150
    window = np.arange(windows)
    y_true = rng.integers(0, 2, windows).astype(np.int8)
    y_pred = np.where(rng.random(windows) < 0.6, 1, y_true).astype(np.int8)  # leans to Increase
    once = bias_verdict(y_true, y_pred, Sample.of(window), reps=1000, seed=3)
    copies = 8
    many = bias_verdict(
        np.repeat(y_true, copies), np.repeat(y_pred, copies), Sample.of(np.repeat(window, copies)), 1000, 3
    )
    assert many["gap_interval_windows"] == pytest.approx(once["gap_interval_windows"])
    assert many["p_value_windows"] == pytest.approx(once["p_value_windows"])
    assert many["windows"] == once["windows"] == windows
    assert many["p_value_rows_independent"] < once["p_value_rows_independent"] / 10


def test_resampling_matches_drawing_window_indices() -> None:
    """Both paths of resample_totals (multinomial over distinct windows, index draws) have the
    distribution of the textbook block bootstrap: draw W window indices with replacement."""
    rng = np.random.default_rng(4)
    windows = 300
    size = rng.integers(1, 4, windows)
    window = np.repeat(np.arange(windows), size)
    y_true = np.repeat(rng.integers(0, 2, windows), size)
    y_pred = rng.integers(0, 2, window.size)
    sample = Sample.of(window)
    columns = np.stack([y_pred - y_true, np.ones(window.size)], axis=1).astype(float)
    per_window = sample.per_window(columns)
    reps = 6000
    compressed = resample_totals(sample, per_window, reps, seed=5)[:, 0]  # few distinct: multinomial
    spread = np.concatenate([per_window, rng.random((windows, 3))], axis=1)  # 5 columns: index draws
    drawn = resample_totals(sample, spread, reps, seed=6)[:, 0]
    naive = []
    for _ in range(reps):
        picked = rng.integers(0, windows, windows)
        naive.append(per_window[picked, 0].sum() / per_window[picked, 1].sum())
    for totals in (compressed, drawn):
        gaps = totals[:, 0] / totals[:, 1]
        assert np.percentile(gaps, [2.5, 50, 97.5]) == pytest.approx(
            np.percentile(naive, [2.5, 50, 97.5]), abs=0.006
        )


def test_folds_are_resampled_within_themselves() -> None:
    sizes = [5, 40, 12]
    sample = Sample.from_folds([np.repeat(np.arange(n), 2) for n in sizes])
    assert sample.folds == 3 and sample.windows == sum(sizes) and sample.rows == 2 * sum(sizes)
    totals = resample_totals(sample, np.ones((sample.windows, 1)), reps=50, seed=0)
    assert totals.shape == (50, 3, 1)
    assert (totals[:, :, 0] == np.array(sizes)).all()  # every replicate keeps each fold's size
    with pytest.raises(ValueError, match="two folds"):
        Sample.of(np.array([0, 0, 1]), fold=np.array([0, 1, 1]))


def test_fewer_than_two_windows_says_so_instead_of_an_interval() -> None:
    y = np.array([1, 1, 1, 1], dtype=np.int8)
    result = bias_verdict(y, np.zeros(4, dtype=np.int8), Sample.of(np.zeros(4, dtype=np.int64)), 500, 0)
    assert result["gap_interval_windows"] is None and result["biased"] is None
    assert "1 label window" in result["unavailable"] and "at least 2" in result["unavailable"]
    assert result["p_value_rows_independent"] is not None  # the row-level figure is still there
    off = bias_verdict(y, y, Sample.of(np.arange(4)), reps=0, seed=0)
    assert off["biased"] is None and "bootstrap_reps = 0" in off["unavailable"]


def test_bootstrap_p_value_by_hand() -> None:
    replicates = np.array([-1.0, 0.5, 1.0, 2.0, 3.0])  # one of five at or below 0
    assert bootstrap_p_value(replicates) == pytest.approx(2 * (1 + 1) / 6)
    assert bootstrap_p_value(np.ones(99)) == pytest.approx(2 / 100)


def test_mcnemar_matches_scipy() -> None:
    model = np.array([1] * 30 + [0] * 10 + [1] * 50, dtype=bool)
    baseline = np.array([0] * 30 + [1] * 10 + [1] * 50, dtype=bool)
    p, b, c = mcnemar_exact(model, baseline)
    assert (b, c) == (30, 10)
    assert p == pytest.approx(binomtest(30, 40, 0.5).pvalue)


def _skilled(rng: np.random.Generator, y_true: np.ndarray, window: np.ndarray, skill: float) -> np.ndarray:
    """Right on a window with probability ``skill``, every row of it alike."""
    right = rng.random(int(window.max()) + 1) < skill
    return np.where(right[window], y_true, 1 - y_true).astype(np.int8)


def test_model_against_each_baseline_on_the_same_rows() -> None:
    rng = np.random.default_rng(7)
    y_true, window = _daily_like(rng, windows=400, rows=4000)
    sample = Sample.of(window)
    predictors = [
        Scored("good", "local", _skilled(rng, y_true, window, 0.75)),
        Scored("copy", "service", np.ones(y_true.size, dtype=np.int8)),
        Scored("always_increase", "baseline", np.ones(y_true.size, dtype=np.int8)),
        Scored("coin_flip", "baseline", rng.integers(0, 2, y_true.size).astype(np.int8)),
        Scored("majority", "baseline", None, "no rows whose outcome was known before 2019-01-01"),
    ]
    table = compare_to_baselines(y_true, predictors, sample, reps=1000, seed=0)
    by_pair = {(c["model"], c["baseline"]): c for c in table}
    assert len(table) == 6  # 2 models x 3 baselines
    good = by_pair[("good", "always_increase")]
    assert good["better"] and good["interval"][0] > 0 and good["windows"] == sample.windows
    assert good["difference"] == pytest.approx(np.mean(predictors[0].y_pred == y_true) - np.mean(y_true == 1))
    assert good["interval"][0] < good["difference"] < good["interval"][1]
    same = by_pair[("copy", "always_increase")]
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0] and not same["better"]
    assert same["p_value_rows_independent"] == 1.0
    missing = by_pair[("good", "majority")]
    assert missing["better"] is None and "majority unavailable" in missing["unavailable"]
    assert "known before" in missing["unavailable"]


def test_a_lucky_model_is_not_better_by_windows() -> None:
    """A model with no skill, against a coin flip, on rows crowded in few windows: the rows
    (McNemar) often call one of them better; the windows rarely do."""
    rng = np.random.default_rng(8)
    naive = windowed = 0
    trials = 60
    for _ in range(trials):
        y_true, window = _daily_like(rng, windows=120, rows=3000)
        noise = _skilled(rng, y_true, window, 0.5)  # right or wrong by whole window: no skill
        coin = rng.integers(0, 2, y_true.size).astype(np.int8)
        predictors = [Scored("model", "local", noise), Scored("coin_flip", "baseline", coin)]
        (row,) = compare_to_baselines(y_true, predictors, Sample.of(window), reps=400, seed=1)
        naive += row["p_value_rows_independent"] < 0.05
        windowed += bool(row["better"] or row["worse"])
    assert naive / trials > 0.4
    assert windowed / trials <= 0.15


def test_verdict_table_with_no_model_has_bias_rows_only() -> None:
    rng = np.random.default_rng(9)
    y_true, window = _daily_like(rng, windows=50, rows=500)
    predictors = [Scored("always_increase", "baseline", np.ones(y_true.size, dtype=np.int8))]
    table = verdict_table(y_true, predictors, Sample.of(window), reps=300, seed=0)
    assert table["comparisons"] == [] and "no model" in table["notes"][0]
    assert table["bias"][0]["biased"] and table["bias"][0]["windows"] == table["windows"] == 50


TEST_START = START + timedelta(days=5)


def test_majority_without_history_is_unavailable_and_the_run_goes_on(
    backtest_settings: BacktestSettings, market: dict
) -> None:
    """A window from the first data: no outcome was known before it, so there is no majority."""
    result = run_backtest(backtest_settings, BacktestConfig(title="From the first row"))
    report = json.loads(result.json_path.read_text())
    sections = {p["name"]: p for p in report["predictors"]}
    assert sections["majority"]["metrics"] is None
    assert "no rows whose outcome was known before" in sections["majority"]["unavailable"]
    assert sections["always_increase"]["metrics"]["classification"]["rows"] == report["data"]["rows"]
    assert any(note.startswith("majority unavailable:") for note in report["notes"])
    summary = {row["predictor"]: row for row in report["summary"]}
    assert summary["majority"]["unavailable"] and summary["majority"]["accuracy"] is None
    assert "majority" not in report["predictions"]
    bias_rows = {row["predictor"]: row for row in report["verdicts"]["bias"]}
    assert bias_rows["majority"]["biased"] is None
    html = result.html_path.read_text()
    assert "unavailable: no rows whose outcome was known before" in html
    assert "majority" in result.summary_table and "unavailable" in result.summary_table


def test_the_summary_verdicts_are_the_window_aware_ones(
    backtest_settings: BacktestSettings, market: dict
) -> None:
    config = BacktestConfig(
        start=TEST_START,
        predictors=[BaselineSpec(name="always_increase"), BaselineSpec(name="coin_flip")],
    )
    report = run_backtest(backtest_settings, config).report
    summary = {row["predictor"]: row for row in report["summary"]}
    by_name = {p["name"]: p["metrics"] for p in report["predictors"]}
    for name in ("always_increase", "coin_flip"):
        bias = by_name[name]["bias"]
        assert summary[name]["biased"] is bias["biased"]
        assert bias["biased"] == (bias["gap_interval_windows"][0] > 0 or bias["gap_interval_windows"][1] < 0)
        assert summary[name]["bias_p_value_rows_independent"] == bias["p_value_rows_independent"]
        assert summary[name]["windows"] == report["data"]["label_windows"]
        assert "bias_gap" not in by_name[name]["bootstrap"]  # one interval of the gap, the verdict's
    assert report["verdicts"]["windows"] == report["data"]["label_windows"]
    sweep = by_name["always_increase"]["fee_sweep"]
    assert [row["fees_bps"] for row in sweep["sweep"]] == [float(f) for f in range(0, 55, 5)]
    assert report["overfitting"]["pbo"]["trials"] == 2
    html_text = (backtest_settings.reports_path / f"backtest-{report['run_id']:06d}.html").read_text()
    assert html_text.index('id="verdicts"') < html_text.index('id="summary"') < html_text.index('id="data"')


def test_no_bootstrap_says_so_in_the_report(backtest_settings: BacktestSettings, market: dict) -> None:
    config = BacktestConfig(start=TEST_START, bootstrap_reps=0, predictors=[BaselineSpec(name="coin_flip")])
    result = run_backtest(backtest_settings, config)
    bias = result.report["predictors"][0]["metrics"]["bias"]
    assert bias["biased"] is None and bias["gap_interval_windows"] is None
    assert "bootstrap_reps = 0" in result.report["verdicts"]["notes"][-1]
    assert "bootstrap turned off" in result.html_path.read_text()
