"""Block-bootstrap intervals that resample whole label windows, not rows.

Headlines that share a label candle share its outcome: on the bundled 2017-2020 data 2,780
rows fall in 1,468 windows, so rows are not independent and a row-level interval is too
narrow. Each replicate draws as many windows as there are, with replacement, and recomputes
the scores from the drawn windows' confusion counts.

Exact and fast: a window enters a score only through its four confusion counts, so windows
with the same counts are interchangeable. Drawing W windows uniformly with replacement is
then the same as drawing how many of each distinct count vector from a multinomial, which
costs replicates x distinct vectors (a few dozen) instead of replicates x windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.backtest.scores import scores_from_counts


def window_confusion(y_true: np.ndarray, y_pred: np.ndarray, window: np.ndarray, windows: int) -> np.ndarray:
    """(windows, 4) counts of TP, FN, FP, TN per window (``window`` holds 0..windows-1 per row)."""
    cell = 2 * (1 - y_true.astype(np.int64)) + (1 - y_pred.astype(np.int64))
    return np.bincount(window * 4 + cell, minlength=windows * 4).reshape(windows, 4)


def _distinct_vectors(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``counts`` and how many windows have each (one packed-key sort)."""
    top = int(counts.max()) + 1 if counts.size else 1
    if top**4 >= 2**62:  # windows too large to pack four counts in one int64: sort rows instead
        return np.unique(counts, axis=0, return_counts=True)
    keys = ((counts[:, 0] * top + counts[:, 1]) * top + counts[:, 2]) * top + counts[:, 3]
    unique_keys, first, frequency = np.unique(keys, return_index=True, return_counts=True)
    del unique_keys
    return counts[first], frequency


def block_bootstrap(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    window: np.ndarray,
    windows: int,
    reps: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Percentile intervals of accuracy, balanced accuracy, MCC and share predicted Increase."""
    if reps <= 0 or windows == 0:
        return {"reps": 0}
    vectors, frequency = _distinct_vectors(window_confusion(y_true, y_pred, window, windows))
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(windows, frequency / windows, size=reps)  # (reps, distinct)
    totals = draws @ vectors  # (reps, 4): TP, FN, FP, TN of each replicate
    scores = scores_from_counts(totals[:, 0], totals[:, 1], totals[:, 2], totals[:, 3])
    tail = (1 - confidence) / 2 * 100
    intervals = {
        name: [float(v) for v in np.nanpercentile(values, [tail, 100 - tail])]
        for name, values in scores.items()
    }
    return {"reps": reps, "seed": seed, "windows": windows, "confidence": confidence, **intervals}
