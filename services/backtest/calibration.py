"""Calibration of p(Increase): Brier score, log loss and reliability bins.

Only predictors that give a probability are scored here; a label-only predictor (always
Increase, momentum, an endpoint answering in words) gets ``None`` rather than a made-up 0/1
probability whose log loss would mean nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CLIP = 1e-15  # log loss of a confident wrong answer is large but finite (scikit-learn's clip)


def calibration_report(y_true: np.ndarray, p_increase: np.ndarray, bins: int = 10) -> dict[str, Any] | None:
    if p_increase.size == 0 or np.isnan(p_increase).any():
        return None
    outcome = y_true.astype(float)
    clipped = np.clip(p_increase, _CLIP, 1 - _CLIP)
    log_loss = -np.mean(outcome * np.log(clipped) + (1 - outcome) * np.log(1 - clipped))
    # Equal-width bins; p = 1.0 belongs to the last bin.
    index = np.minimum((p_increase * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p_increase, minlength=bins)
    sum_y = np.bincount(index, weights=outcome, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = sum_p / count
        observed = sum_y / count
    weight = count / count.sum()
    ece = float(np.nansum(weight * np.abs(mean_p - observed)))
    edges = np.round(np.linspace(0, 1, bins + 1), 6)
    return {
        "brier": float(np.mean((p_increase - outcome) ** 2)),
        "log_loss": float(log_loss),
        "expected_calibration_error": ece,
        "bins": [
            {
                "low": float(edges[i]),
                "high": float(edges[i + 1]),
                "count": int(count[i]),
                "mean_p_increase": None if count[i] == 0 else float(mean_p[i]),
                "share_increase": None if count[i] == 0 else float(observed[i]),
            }
            for i in range(bins)
        ],
    }
