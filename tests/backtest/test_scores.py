"""Metric functions against scikit-learn and against cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from services.backtest.bias import bias_test
from services.backtest.bootstrap import block_bootstrap
from services.backtest.calibration import calibration_report
from services.backtest.scores import classification_report, wilson_interval


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.5, 0.9, 1.0])
def test_classification_matches_scikit_learn(seed: int, share: float) -> None:
    rng = np.random.default_rng(seed)
    y_true = (rng.random(500) < 0.45).astype(np.int8)
    y_pred = (rng.random(500) < share).astype(np.int8)  # share 1.0: the always-Increase case
    ours = classification_report(y_true, y_pred)
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert ours["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert ours["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))
    assert ours["confusion"]["matrix"] == skm.confusion_matrix(y_true, y_pred, labels=[1, 0]).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=[1, 0], zero_division=0
    )
    for index, label in enumerate(["Increase", "Decrease"]):
        figures = ours["per_class"][label]
        assert figures["precision"] == pytest.approx(precision[index])
        assert figures["recall"] == pytest.approx(recall[index])
        assert figures["f1"] == pytest.approx(f1[index])
        assert figures["support"] == support[index]
    assert ours["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_confusion_by_hand() -> None:
    y_true = np.array([1, 1, 1, 0, 0], dtype=np.int8)
    y_pred = np.array([1, 0, 1, 1, 0], dtype=np.int8)
    report = classification_report(y_true, y_pred)
    assert report["confusion"]["matrix"] == [[2, 1], [1, 1]]  # rows actual Inc/Dec, columns predicted
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert report["mcc"] == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))


def test_wilson_interval_by_hand() -> None:
    # 8 of 10, z = 1.96: the textbook example (Wilson 1927; Newcombe 1998) gives 0.490 to 0.943.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0


def test_calibration_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(2000)
    y = (rng.random(2000) < p).astype(np.int8)
    ours = calibration_report(y, p, bins=10)
    assert ours is not None
    assert ours["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert ours["log_loss"] == pytest.approx(skm.log_loss(y, p))
    share, mean_p = calibration_curve(y, p, n_bins=10, strategy="uniform")
    filled = [b for b in ours["bins"] if b["count"]]
    assert [b["share_increase"] for b in filled] == pytest.approx(share.tolist())
    assert [b["mean_p_increase"] for b in filled] == pytest.approx(mean_p.tolist())
    assert sum(b["count"] for b in ours["bins"]) == 2000


def test_calibration_needs_probabilities() -> None:
    assert calibration_report(np.array([1, 0]), np.array([np.nan, np.nan])) is None


def test_always_increase_is_flagged_biased() -> None:
    rng = np.random.default_rng(4)
    y_true = (rng.random(1000) < 0.5).astype(np.int8)
    result = bias_test(y_true, np.ones(1000, dtype=np.int8))
    assert result["biased_if_rows_independent"] and result["direction"] == "Increase"
    assert result["share_predicted_increase"] == 1.0
    assert result["p_value_rows_independent"] < 1e-100


def test_balanced_random_predictor_is_not_flagged() -> None:
    rng = np.random.default_rng(5)
    y_true = (rng.random(1000) < 0.5).astype(np.int8)
    y_pred = rng.permutation(y_true)  # same share predicted Increase as actually happened, random order
    result = bias_test(y_true, y_pred)
    assert not result["biased_if_rows_independent"]
    assert result["p_value_rows_independent"] == pytest.approx(1.0)


def test_bias_p_value_by_hand() -> None:
    y_true = np.array([1] * 50 + [0] * 50, dtype=np.int8)
    y_pred = np.array([1] * 60 + [0] * 40, dtype=np.int8)
    result = bias_test(y_true, y_pred, alpha=0.05)
    assert result["p_value_rows_independent"] == pytest.approx(binomtest(60, 100, 0.5).pvalue)
    assert result["p_value_rows_independent"] == pytest.approx(0.0569, abs=1e-4)
    assert not result["biased_if_rows_independent"]
    assert bias_test(y_true, y_pred, alpha=0.1)["biased_if_rows_independent"]


def test_bootstrap_is_seeded_and_resamples_windows() -> None:
    rng = np.random.default_rng(6)
    windows = 300
    rows_per_window = 6
    # Every row in a window is right or wrong together: rows are not independent.
    window_right = rng.random(windows) < 0.55
    window = np.repeat(np.arange(windows), rows_per_window)
    y_true = rng.integers(0, 2, windows * rows_per_window).astype(np.int8)
    y_pred = np.where(window_right[window], y_true, 1 - y_true).astype(np.int8)
    first = block_bootstrap(y_true, y_pred, window, windows, reps=2000, seed=1)
    again = block_bootstrap(y_true, y_pred, window, windows, reps=2000, seed=1)
    assert first == again
    wilson = wilson_interval(int((y_true == y_pred).sum()), y_true.size)
    block_width = first["accuracy"][1] - first["accuracy"][0]
    # Six dependent rows per window: the honest interval is about sqrt(6) ~ 2.4 times wider.
    assert block_width > 1.8 * (wilson[1] - wilson[0])
    assert first["accuracy"][0] < float((y_true == y_pred).mean()) < first["accuracy"][1]


def test_bootstrap_matches_naive_window_resampling() -> None:
    """The multinomial shortcut has the same distribution as drawing window indices."""
    rng = np.random.default_rng(7)
    windows = 200
    window = np.sort(rng.integers(0, windows, 700))
    window = np.unique(window, return_inverse=True)[1]
    windows = int(window.max()) + 1
    y_true = rng.integers(0, 2, window.size).astype(np.int8)
    y_pred = rng.integers(0, 2, window.size).astype(np.int8)
    ours = block_bootstrap(y_true, y_pred, window, windows, reps=4000, seed=2)
    naive = []
    members = [np.flatnonzero(window == w) for w in range(windows)]
    for _ in range(4000):
        picked = np.concatenate([members[w] for w in rng.integers(0, windows, windows)])
        naive.append((y_true[picked] == y_pred[picked]).mean())
    low, high = np.percentile(naive, [2.5, 97.5])
    assert ours["accuracy"][0] == pytest.approx(low, abs=0.006)
    assert ours["accuracy"][1] == pytest.approx(high, abs=0.006)


def test_window_aware_bias_gap() -> None:
    """The bootstrap interval of (share predicted - share actual) resamples whole windows."""
    rng = np.random.default_rng(8)
    windows = 400
    window = np.repeat(np.arange(windows), 3)
    y_true = np.repeat(rng.integers(0, 2, windows), 3).astype(np.int8)
    always = np.ones(window.size, dtype=np.int8)
    gap = block_bootstrap(y_true, always, window, windows, reps=1000, seed=0)["bias_gap"]
    assert gap[0] > 0  # always Increase: the whole interval sits above zero
    shuffled = np.repeat(rng.permutation(y_true[::3]), 3).astype(np.int8)
    fair = block_bootstrap(y_true, shuffled, window, windows, reps=1000, seed=0)["bias_gap"]
    assert fair[0] < 0 < fair[1]
