"""Every figure of one predictor on one set of rows: the report's per-predictor section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from services.backtest.bootstrap import block_bootstrap
from services.backtest.calibration import calibration_report
from services.backtest.overfitting import information_coefficient
from services.backtest.scores import classification_report
from services.backtest.strategy import Windows, strategy_fee_sweep, strategy_report
from services.backtest.verdicts import Sample, bias_verdict


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
    """Classification, block-bootstrap intervals, bias verdict, calibration, IC and strategy figures.

    The bias verdict is window-aware (``verdicts.bias_verdict``); the bias gap's interval is
    its, so the bootstrap section leaves its own copy of the gap out.
    """
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
    bootstrap.pop("bias_gap", None)
    sample = Sample(windows.row_window, np.zeros(windows.count, dtype=np.int64))
    bias = bias_verdict(y_true, y_pred, sample, options.bootstrap_reps, options.seed, options.bias_alpha)
    has_p = p_increase.size > 0 and not np.isnan(p_increase).any()
    return {
        "classification": classification_report(y_true, y_pred, options.confidence),
        "windows": windows.count,
        "bootstrap": bootstrap,
        "bias": bias,
        "calibration": calibration_report(y_true, p_increase, options.reliability_bins),
        "information_coefficient": information_coefficient(
            p_increase,
            windows.window_return[windows.row_window],
            sample,
            confidence=options.confidence,
        )
        if has_p
        else None,
        "strategy": strategy_report(y_pred, windows, options.fees_bps, options.decrease_position),
        "fee_sweep": strategy_fee_sweep(y_pred, windows, options.decrease_position),
    }
