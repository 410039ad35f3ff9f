"""Bias: does a predictor say Increase more (or less) often than Increase happened?

The research note found untuned models and ChatGPT answering "Increase" for every headline.
The test compares the count predicted Increase with a binomial whose probability is the
share that actually was Increase in the same rows (two-sided, ``scipy.stats.binomtest``).

That test takes every row as an independent trial, which rows sharing a label window are not:
its p-value is reported as ``p_value_rows_independent`` and never gives the verdict. The
verdict (``biased``) is the window-aware one of ``services.backtest.verdicts.bias_verdict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest

# A share of exactly 0 or 1 makes any other count impossible (p = 0): keep the test defined.
_EDGE = 1e-9


def bias_test(y_true: np.ndarray, y_pred: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    rows = int(y_true.size)
    predicted_increase = int(y_pred.sum())
    actual_share = float(y_true.mean()) if rows else float("nan")
    predicted_share = predicted_increase / rows if rows else float("nan")
    p_value = float(
        binomtest(predicted_increase, rows, min(max(actual_share, _EDGE), 1 - _EDGE)).pvalue if rows else 1.0
    )
    return {
        "share_predicted_increase": predicted_share,
        "share_actual_increase": actual_share,
        "gap": predicted_share - actual_share,
        "p_value_rows_independent": p_value,
        "alpha": alpha,
        "biased_if_rows_independent": bool(p_value < alpha),
        "direction": "Increase" if predicted_share > actual_share else "Decrease",
    }
