"""Classification metrics of a two-label predictor, vectorised over numpy arrays.

Labels are coded 1 = Increase, 0 = Decrease throughout the backtest. The confusion matrix
has actual labels as rows and predicted labels as columns, both in the order
(Increase, Decrease), the order of ``services.common.prompts.TREND_LABELS``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm

from services.common.prompts import DECREASE, INCREASE

CLASS_ORDER = (INCREASE, DECREASE)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """[[TP, FN], [FP, TN]] with Increase as the positive class (rows actual, columns predicted)."""
    codes = np.bincount(2 * (1 - y_true.astype(np.int64)) + (1 - y_pred.astype(np.int64)), minlength=4)
    return codes.reshape(2, 2)


def _safe_ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def scores_from_counts(tp: Any, fn: Any, fp: Any, tn: Any) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, MCC, share predicted Increase and bias gap from confusion counts.

    Works on scalars or on arrays of counts (one per bootstrap replicate) alike. A recall
    with no support is left out of the balanced accuracy (scikit-learn's convention); MCC
    with an empty row or column is 0 (again scikit-learn's).
    """
    tp, fn, fp, tn = (np.asarray(value, dtype=float) for value in (tp, fn, fp, tn))
    total = tp + fn + fp + tn
    recall_increase = _safe_ratio(tp, tp + fn)
    recall_decrease = _safe_ratio(tn, tn + fp)
    balanced = np.nanmean(np.stack([recall_increase, recall_decrease]), axis=0)
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.where(denominator > 0, _safe_ratio(tp * tn - fp * fn, denominator), 0.0)
    return {
        "accuracy": _safe_ratio(tp + tn, total),
        "balanced_accuracy": balanced,
        "mcc": mcc,
        "share_predicted_increase": _safe_ratio(tp + fp, total),
        # share predicted Increase minus share actually Increase: the bias, as a difference
        "bias_gap": _safe_ratio(fp - fn, total),
    }


def per_class(matrix: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each label (0 where undefined, as scikit-learn)."""
    out = {}
    for index, label in enumerate(CLASS_ORDER):
        true_positive = float(matrix[index, index])
        predicted = float(matrix[:, index].sum())
        support = float(matrix[index, :].sum())
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
    return out


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (treats every row as independent)."""
    if trials == 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(0.5 + confidence / 2))
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Every row-level classification figure of one predictor."""
    matrix = confusion_counts(y_true, y_pred)
    (tp, fn), (fp, tn) = matrix
    scores = {name: float(value) for name, value in scores_from_counts(tp, fn, fp, tn).items()}
    correct = int(tp + tn)
    return {
        "rows": int(y_true.size),
        "correct": correct,
        **scores,
        "accuracy_wilson": list(wilson_interval(correct, int(y_true.size), confidence)),
        "per_class": per_class(matrix),
        "macro_f1": float(np.mean([item["f1"] for item in per_class(matrix).values()])),
        "confusion": {"labels": list(CLASS_ORDER), "matrix": matrix.tolist()},
    }
