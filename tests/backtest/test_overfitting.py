"""DSR, PBO, IC and the fee sweep against published worked examples, scipy and cases by hand."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import kurtosis, norm, pearsonr, skew, spearmanr

from services.backtest.overfitting import (
    EULER_MASCHERONI,
    deflated_sharpe,
    expected_max_sharpe,
    information_coefficient,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
)
from services.backtest.strategy import break_even_fee_bps, fee_sweep
from services.backtest.verdicts import Sample


def test_deflated_sharpe_ratio_of_the_papers_numerical_example() -> None:
    """Bailey & López de Prado (2014), "A numerical example": N = 100 trials whose annualised
    Sharpes vary by V = 1/2, the best 2.5 annualised over T = 1,250 daily returns with skewness -3
    and kurtosis 10. The paper finds SR0 = 0.1132 per day and DSR = 0.9004."""
    days = 250
    benchmark = expected_max_sharpe(100, 0.5 / days)
    assert benchmark == pytest.approx(0.1132, abs=1e-4)
    dsr = probabilistic_sharpe_ratio(2.5 / math.sqrt(days), benchmark, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=1e-4)


def test_expected_max_sharpe_is_the_euler_mascheroni_formula_and_near_the_exact_maximum() -> None:
    for trials in (10, 100, 1000):
        formula = (1 - EULER_MASCHERONI) * norm.ppf(1 - 1 / trials) + EULER_MASCHERONI * norm.ppf(
            1 - 1 / (trials * math.e)
        )
        assert expected_max_sharpe(trials, 4.0) == pytest.approx(2 * formula)
        # E[max of N standard normals] = integral of x N phi(x) Phi(x)^(N-1)
        exact = integrate.quad(lambda x, n=trials: x * n * norm.pdf(x) * norm.cdf(x) ** (n - 1), -10, 10)[0]
        assert formula == pytest.approx(exact, rel=0.03)
    assert expected_max_sharpe(1, 1.0) == 0.0


def test_psr_is_the_formula_with_scipy_moments() -> None:
    rng = np.random.default_rng(0)
    returns = rng.standard_t(5, 800) * 0.01 + 0.001
    report = deflated_sharpe(
        {"a": returns, "b": rng.normal(0, 0.01, 800), "c": rng.normal(0.0005, 0.01, 800)}
    )
    row = next(r for r in report["predictors"] if r["predictor"] == "a")
    sr = returns.mean() / returns.std(ddof=1)
    g3, g4 = skew(returns), kurtosis(returns, fisher=False)
    assert row["sharpe_per_period"] == pytest.approx(sr)
    assert row["psr"] == pytest.approx(
        norm.cdf(sr * math.sqrt(799) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))
    )
    sharpes = [r["sharpe_per_period"] for r in report["predictors"]]
    assert report["sharpe_variance"] == pytest.approx(np.var(sharpes, ddof=1))
    assert report["expected_max_sharpe"] == pytest.approx(expected_max_sharpe(3, np.var(sharpes, ddof=1)))
    assert row["dsr"] < row["psr"]  # deflating for three trials only lowers it
    assert report["best"] == max(report["predictors"], key=lambda r: r["sharpe_per_period"])["predictor"]


def test_psr_at_the_true_sharpe_is_uniform() -> None:
    """Normal returns whose true Sharpe is the benchmark: PSR > 0.95 about 5% of the time."""
    rng = np.random.default_rng(1)
    true_sharpe, observations = 0.1, 500
    values = []
    for _ in range(3000):
        r = rng.normal(true_sharpe, 1.0, observations)
        sr = r.mean() / r.std(ddof=1)
        values.append(
            probabilistic_sharpe_ratio(sr, true_sharpe, observations, skew(r), kurtosis(r, fisher=False))
        )
    assert np.mean(np.array(values) > 0.95) == pytest.approx(0.05, abs=0.015)


def test_pbo_by_hand_when_the_in_sample_winner_always_loses() -> None:
    # Four periods, four blocks of one, mean as the metric: A shines only in period 0.
    # With period 0 in-sample A wins in-sample and loses out of it; without it B wins in-sample
    # and loses out of it (A's 1.5 beats B's 1): every one of the C(4, 2) = 6 splits overfits.
    matrix = np.array([[3.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    result = probability_of_backtest_overfitting(matrix, ["A", "B"], blocks=4, metric="mean")
    assert result["combinations"] == 6 and result["pbo"] == 1.0
    assert result["logits"] == pytest.approx([math.log(1 / 2)] * 6)  # rank 1 of 2: omega = 1/3


def test_pbo_by_hand_when_one_predictor_is_always_better() -> None:
    matrix = np.array([[2.0, 1.0]] * 4)
    result = probability_of_backtest_overfitting(matrix, ["A", "B"], blocks=4, metric="mean")
    assert result["pbo"] == 0.0
    assert result["logits"] == pytest.approx([math.log(2)] * 6)  # rank 2 of 2: omega = 2/3
    assert result["selected_in_sample"] == {"A": 6}


def _naive_pbo(matrix: np.ndarray, blocks: int) -> float:
    periods, trials = matrix.shape
    edges = np.linspace(0, periods, blocks + 1).round().astype(int)
    parts = [matrix[edges[i] : edges[i + 1]] for i in range(blocks)]
    overfit = total = 0
    for chosen in combinations(range(blocks), blocks // 2):
        inside = np.concatenate([parts[i] for i in chosen])
        outside = np.concatenate([parts[i] for i in range(blocks) if i not in chosen])
        sharpe_in = inside.mean(axis=0) / inside.std(axis=0)
        sharpe_out = outside.mean(axis=0) / outside.std(axis=0)
        best = int(np.argmax(sharpe_in))
        rank = 1 + np.sum(sharpe_out < sharpe_out[best])
        omega = rank / (trials + 1)
        overfit += math.log(omega / (1 - omega)) <= 0
        total += 1
    return overfit / total


def test_pbo_matches_a_loop_over_every_split() -> None:
    rng = np.random.default_rng(2)
    matrix = rng.normal(0, 1, (240, 7)) + np.linspace(0, 0.1, 7)
    for blocks in (4, 8, 10):
        fast = probability_of_backtest_overfitting(matrix, blocks=blocks)
        assert fast["combinations"] == math.comb(blocks, blocks // 2)
        assert fast["pbo"] == pytest.approx(_naive_pbo(matrix, blocks))


def test_pbo_of_noise_is_near_a_half_and_of_skill_near_zero() -> None:
    noise = [
        probability_of_backtest_overfitting(np.random.default_rng(seed).normal(0, 1, (800, 20)))["pbo"]
        for seed in range(8)
    ]
    assert 0.3 < float(np.mean(noise)) < 0.7
    rng = np.random.default_rng(3)
    skilled = rng.normal(0, 1, (800, 20))
    skilled[:, 4] += 0.4
    result = probability_of_backtest_overfitting(skilled)
    assert result["pbo"] < 0.05 and result["combinations"] == 12870
    assert max(result["selected_in_sample"], key=result["selected_in_sample"].get) == "4"


def test_pbo_needs_two_predictors_and_two_periods() -> None:
    assert probability_of_backtest_overfitting(np.zeros((10, 1)))["pbo"] is None
    assert "2 predictors" in probability_of_backtest_overfitting(np.zeros((1, 3)))["unavailable"]
    assert probability_of_backtest_overfitting(np.random.default_rng(0).normal(size=(6, 3)))["blocks"] == 6


def test_ic_and_rank_ic_per_fold_match_scipy() -> None:
    rng = np.random.default_rng(4)
    folds, windows_per_fold, per_window = 4, 60, 3
    window_returns = rng.normal(0, 0.01, folds * windows_per_fold)
    window = np.repeat(np.arange(folds * windows_per_fold), per_window)
    fold = window // windows_per_fold
    realised = window_returns[window]  # every row of a window has its window's return
    p = np.clip(0.5 + 8 * realised + rng.normal(0, 0.05, realised.size), 0, 1)
    sample = Sample.of(window, fold)
    result = information_coefficient(p, realised, sample, fold)
    for number, row in enumerate(result["folds"]):
        rows = fold == number
        assert row["ic"] == pytest.approx(pearsonr(p[rows], realised[rows])[0])
        assert row["rank_ic"] == pytest.approx(spearmanr(p[rows], realised[rows])[0])
        assert row["windows"] == windows_per_fold
    assert result["ic"] == pytest.approx(np.mean([row["ic"] for row in result["folds"]]))
    assert result["ic_interval"][0] < result["ic"] < result["ic_interval"][1]
    assert result["rank_ic_interval"][0] < result["rank_ic"] < result["rank_ic_interval"][1]
    assert result["ic_t_across_folds"] > 2


def test_ic_interval_does_not_narrow_when_rows_repeat_inside_windows() -> None:
    rng = np.random.default_rng(5)
    windows = 200
    realised = rng.normal(0, 0.01, windows)
    p = np.clip(0.5 + 3 * realised + rng.normal(0, 0.05, windows), 0, 1)
    once = information_coefficient(p, realised, Sample.of(np.arange(windows)))
    copies = np.repeat(np.arange(windows), 6)
    many = information_coefficient(p[copies], realised[copies], Sample.of(copies))
    assert many["ic"] == pytest.approx(once["ic"])
    assert many["ic_interval"] == pytest.approx(once["ic_interval"])
    assert many["windows"] == windows and many["rows"] == 6 * windows


def test_ic_standard_error_is_the_textbook_one_for_independent_normal_rows() -> None:
    """Bivariate normal, one row per window: SE(r) = (1 - r^2) / sqrt(n) (Fisher 1915)."""
    rng = np.random.default_rng(10)
    rows, rho = 20_000, 0.3
    x = rng.normal(size=rows)
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=rows)
    result = information_coefficient(x, y, Sample.of(np.arange(rows)))
    assert result["ic_se"] == pytest.approx((1 - result["ic"] ** 2) / math.sqrt(rows), rel=0.05)
    low, high = result["ic_interval"]
    assert math.atanh(high) - math.atanh(low) == pytest.approx(
        2 * norm.ppf(0.975) * result["ic_se"] / (1 - result["ic"] ** 2)
    )


def test_ic_standard_error_agrees_with_a_block_bootstrap() -> None:
    """Rows crowded in windows that share a return: the cluster-robust SE against resampling windows."""
    rng = np.random.default_rng(11)
    windows = 300
    size = rng.integers(1, 12, windows)
    window = np.repeat(np.arange(windows), size)
    realised = rng.normal(0, 0.01, windows)[window]
    p = 0.5 + 4 * realised + rng.normal(0, 0.02, windows)[window] + rng.normal(0, 0.02, window.size)
    result = information_coefficient(p, realised, Sample.of(window))
    members = [np.flatnonzero(window == w) for w in range(windows)]
    draws = []
    for _ in range(1500):
        picked = np.concatenate([members[w] for w in rng.integers(0, windows, windows)])
        draws.append(pearsonr(p[picked], realised[picked])[0])
    assert result["ic_se"] == pytest.approx(np.std(draws), rel=0.12)
    naive_se = (1 - result["ic"] ** 2) / math.sqrt(window.size)
    assert result["ic_se"] > 1.5 * naive_se  # the rows-as-independent error is too small


def test_ic_without_probabilities_or_variation_is_unavailable() -> None:
    sample = Sample.of(np.arange(10))
    assert (
        information_coefficient(np.full(10, np.nan), np.ones(10), sample)["unavailable"] == "no p(Increase)"
    )
    constant = information_coefficient(np.full(10, 0.5), np.arange(10.0), sample)
    assert "does not vary" in constant["unavailable"]


def test_break_even_fee_by_hand() -> None:
    # one window: +1% gross, in and out (2 units of notional): 1 + 0.01 - 2 f = 1 at f = 50 bps
    even = break_even_fee_bps(np.array([0.01]), np.array([2.0]))
    assert even["compounded"] == pytest.approx(50.0) and even["mean"] == pytest.approx(50.0)
    assert break_even_fee_bps(np.array([-0.01]), np.array([2.0]))["compounded"] == 0.0
    assert break_even_fee_bps(np.array([0.01]), np.array([0.0])) == {"compounded": None, "mean": None}


def test_fee_sweep_and_break_even_agree() -> None:
    rng = np.random.default_rng(6)
    gross = rng.normal(0.0008, 0.01, 500)
    traded = rng.choice([0.0, 1.0, 2.0], 500)
    result = fee_sweep(gross, traded, periods=500, periods_per_year=8766)
    returns = [row["cumulative_return"] for row in result["sweep"]]
    assert returns == sorted(returns, reverse=True)  # fees only cost
    assert returns[0] == pytest.approx(np.prod(1 + gross) - 1)
    even = result["break_even_bps"]
    assert np.prod(1 + gross - traded * even["compounded"] / 1e4) == pytest.approx(1.0, abs=1e-9)
    assert even["mean"] == pytest.approx(gross.sum() / traded.sum() * 1e4)
    at_mean = gross - traded * even["mean"] / 1e4
    assert at_mean.mean() == pytest.approx(0.0, abs=1e-12)  # Sharpe 0 at the mean break-even
