"""Every figure of one predictor on one set of rows: the report's per-predictor section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from services.backtest.bias import bias_test
from services.backtest.bootstrap import block_bootstrap
from services.backtest.calibration import calibration_report
from services.backtest.scores import classification_report
from services.backtest.strategy import Windows, strategy_report


@dataclass(frozen=True)
class EvaluationOptions:
    fees_bps: float = 10.0
    decrease_position: Literal["short", "flat"] = "short"
    bootstrap_reps: int = 1000
    confidence: float = 0.95
    bias_alpha: float = 0.05
    reliability_bins: int = 10
    seed: int = 0


def evaluate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    p_increase: np.ndarray,
    windows: Windows,
    options: EvaluationOptions,
) -> dict[str, Any]:
    """Classification, block-bootstrap intervals, bias, calibration and strategy figures."""
    if y_true.shape != y_pred.shape or y_true.shape != p_increase.shape:
        raise ValueError("labels, predictions and probabilities must have one value per row")
    bootstrap = block_bootstrap(
        y_true,
        y_pred,
        windows.row_window,
        windows.count,
        options.bootstrap_reps,
        options.seed,
        options.confidence,
    )
    bias = bias_test(y_true, y_pred, options.bias_alpha)
    if "bias_gap" in bootstrap:  # the window-aware check: does the gap's interval exclude 0?
        low, high = bootstrap["bias_gap"]
        bias["gap_interval_windows"] = [low, high]
        bias["biased_by_windows"] = bool(low > 0 or high < 0)
    return {
        "classification": classification_report(y_true, y_pred, options.confidence),
        "windows": windows.count,
        "bootstrap": bootstrap,
        "bias": bias,
        "calibration": calibration_report(y_true, p_increase, options.reliability_bins),
        "strategy": strategy_report(y_pred, windows, options.fees_bps, options.decrease_position),
    }
